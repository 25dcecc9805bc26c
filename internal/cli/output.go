package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Format is how a fleet command prints what the controller answered.
type Format string

// The output formats of -o.
const (
	FormatTable Format = "table" // for people: aligned columns
	FormatJSON  Format = "json"  // the API's resource, as the API writes it
	FormatYAML  Format = "yaml"  // the same, in YAML, with the API's key names
)

// ParseFormat reads -o.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatTable, FormatJSON, FormatYAML:
		return f, nil
	}
	return "", fmt.Errorf("-o %q: want table, json or yaml", s)
}

// Encode writes v in f, which must be json or yaml: indented JSON, or a
// YAML document with the JSON key names and order (the API's types have
// JSON tags only, so v goes through its JSON form).
func (f Format) Encode(w io.Writer, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", f, err)
	}
	if f == FormatJSON {
		_, err = fmt.Fprintf(w, "%s\n", data)
		return err
	}
	return writeYAML(w, data)
}

// EncodeLine writes v as one compact JSON line, or as one YAML document
// starting with "---".
func (f Format) EncodeLine(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", f, err)
	}
	if f == FormatJSON {
		_, err = fmt.Fprintf(w, "%s\n", data)
		return err
	}
	if _, err := io.WriteString(w, "---\n"); err != nil {
		return err
	}
	return writeYAML(w, data)
}

// writeYAML re-encodes a JSON document as YAML, keeping key order. JSON is
// YAML, so it parses as is; the styles JSON forces (flow collections,
// quoted strings) are reset so the encoder picks block style and quotes a
// string only when it would read as something else.
func writeYAML(w io.Writer, jsonDoc []byte) error {
	var n yaml.Node
	if err := yaml.Unmarshal(jsonDoc, &n); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	var plain func(*yaml.Node)
	plain = func(n *yaml.Node) {
		n.Style = 0
		if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && yaml11Bool[strings.ToLower(n.Value)] {
			// YAML 1.2 (this encoder) leaves these plain; YAML 1.1
			// readers (PyYAML, Ruby) would take them for booleans.
			n.Style = yaml.DoubleQuotedStyle
		}
		for _, c := range n.Content {
			plain(c)
		}
	}
	plain(&n)
	var b bytes.Buffer
	e := yaml.NewEncoder(&b)
	e.SetIndent(2)
	if err := e.Encode(&n); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	if err := e.Close(); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	_, err := w.Write(b.Bytes())
	return err
}

var yaml11Bool = map[string]bool{"y": true, "yes": true, "n": true, "no": true, "on": true, "off": true}

// table writes aligned columns; Flush prints them.
func table(w io.Writer, header ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	return tw
}

// row writes one table row; an empty cell prints as "-".
func row(tw io.Writer, cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or line break in a value would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(cells[i])
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
}

// age says how long ago t was, in its largest unit: "45s ago", "3m ago",
// "2h ago", "6d ago"; "never" for the zero time.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now" // clocks apart
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// truncate shortens s to at most n runes, on one line, marking a cut
// with "…".
func truncate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// keyValues writes a map as k=v,k=v sorted by key.
func keyValues(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// isTerminal reports whether w is a terminal that takes cursor control:
// a character device, and TERM is not "dumb".
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
