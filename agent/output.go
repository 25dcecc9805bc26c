package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/flow"
)

// WriteJSON writes the result as spec 11's JSON object.
func WriteJSON(w io.Writer, res *engine.Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// WriteText writes the result for people: one line per step with its
// status and time, the error with its type, then the rollback actions and
// the flow's status.
func WriteText(w io.Writer, res *engine.Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "flow %s (execution %s)\n", res.Flow, res.Execution)
	for _, s := range res.Steps {
		name := s.Name
		if s.Group != "" {
			name = s.Group + "/" + s.Name
		}
		took := "-"
		if s.Attempts > 0 {
			took = duration(s.DurationMS)
		}
		line := fmt.Sprintf("  %s\t%s\t%s", s.Status, name, took)
		if s.Attempts > 1 {
			line += fmt.Sprintf("\t%d attempts", s.Attempts)
		} else {
			line += "\t"
		}
		if s.Marked {
			line += "\tmarked as success"
		}
		if s.Error != nil {
			line += fmt.Sprintf("\t%s: %s", s.Error.Type, oneLine(s.Error.Message))
		}
		fmt.Fprintln(tw, line)
	}
	for _, g := range res.Groups {
		fmt.Fprintf(tw, "  group %s\t%s\n", g.Name, g.Status)
	}
	if len(res.Actions) > 0 {
		fmt.Fprintln(tw, "rollback:")
		for _, a := range res.Actions {
			line := fmt.Sprintf("  %s\t%s\t%s", a.Status, a.Step, a.Action)
			if a.Trigger != "" {
				line += " (" + a.Trigger + ")"
			}
			if a.Error != nil {
				line += fmt.Sprintf("\t%s: %s", a.Error.Type, oneLine(a.Error.Message))
			}
			fmt.Fprintln(tw, line)
		}
	}
	for _, g := range res.Guidance {
		fmt.Fprintf(tw, "guidance: %s %s by %s at %s %s\n", g.Step, g.Action, g.By, g.At.Format(time.RFC3339), g.Note)
	}
	if res.Error != nil {
		fmt.Fprintf(tw, "error: %s: %s\n", res.Error.Type, oneLine(res.Error.Message))
	}
	fmt.Fprintf(tw, "result: %s\n", res.Status)
	return tw.Flush()
}

func duration(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	if d < time.Second {
		return fmt.Sprintf("%dms", ms)
	}
	return d.Round(10 * time.Millisecond).String()
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.ReplaceAll(s, "\n", " | ")
}

// Problem is one reason a flow was refused, in the JSON error output.
type Problem struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Message string `json:"message"`
}

// ErrorOutput is what `apply --output json` prints when no execution ran:
// an invalid flow, bad usage, or a flow that cannot run on this device.
type ErrorOutput struct {
	Status   string    `json:"status"`
	Error    string    `json:"error"`
	Problems []Problem `json:"problems,omitempty"`
}

// WriteErrorJSON writes err as an ErrorOutput: status "Invalid" for bad
// input (exit status 2), "Error" when the agent could not run the flow at
// all (its state dir in use, a damaged journal; exit status 1).
func WriteErrorJSON(w io.Writer, err error) error {
	out := ErrorOutput{Status: "Error", Error: err.Error()}
	if IsUsage(err) {
		out.Status = "Invalid"
	}
	var ps flow.Problems
	if errors.As(err, &ps) {
		out.Error = "invalid flow"
		for _, p := range ps {
			out.Problems = append(out.Problems, Problem{File: p.File, Line: p.Pos.Line, Column: p.Pos.Col, Message: p.Msg})
		}
	}
	var pe *engine.PreflightError
	if errors.As(err, &pe) {
		out.Error = "flow cannot run on this device"
		for _, p := range pe.Problems {
			out.Problems = append(out.Problems, Problem{Message: p})
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// Progress returns an observer that writes a line to w as each step,
// rollback action or pause changes: for people watching a run.
func Progress(w io.Writer) func(engine.Event) {
	return func(ev engine.Event) {
		switch ev.Type {
		case engine.EventStep:
			if ev.Status == engine.Running {
				fmt.Fprintf(w, "  %s: running (attempt %d)\n", ev.Step, ev.Attempt)
				return
			}
			line := fmt.Sprintf("  %s: %s", ev.Step, ev.Status)
			if ev.Error != nil && ev.Status != engine.Succeeded {
				line += fmt.Sprintf(" (%s: %s)", ev.Error.Type, oneLine(ev.Error.Message))
			}
			fmt.Fprintln(w, line)
		case engine.EventAction:
			fmt.Fprintf(w, "  rollback %s %s: %s\n", ev.Step, ev.Action, ev.Status)
		case engine.EventPause:
			fmt.Fprintf(w, "  %s: paused for guidance (edgeflow-agent guide --state-dir DIR ACTION)\n", ev.Step)
		}
	}
}
