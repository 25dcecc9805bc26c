package flow

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/edgeflow/edgeflow/onfailure"
)

var (
	flowNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	stepNameRE = regexp.MustCompile(`^` + stepRE + `$`)
	varNameRE  = regexp.MustCompile(`^` + nameRE + `$`)
	projectRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
)

// slot is one level of a step's place in the flow's structure: which
// container (a steps list, a group, a parallel block) and where in it.
type slot struct {
	container int
	index     int
	parallel  bool
}

// placed is a step with its place, for the rules that depend on order.
type placed struct {
	step  *Step
	group *Group
	path  []slot
	// rollback is "" for a main-sequence step, else the owner of the
	// rollback list it is in: "flow" or the group's name.
	rollback string
	// order is the index in its rollback list.
	order int
}

// order compares the places of two main-sequence steps: -1 when a always
// finishes before b starts, 1 when after, 0 when they may run together (or
// are the same step).
func order(a, b []slot) int {
	for l := 0; l < len(a) && l < len(b); l++ {
		if a[l].index == b[l].index {
			continue
		}
		if a[l].parallel {
			return 0
		}
		if a[l].index < b[l].index {
			return -1
		}
		return 1
	}
	return 0
}

type validator struct {
	d      *decoder
	f      *Flow
	names  map[string]Pos
	steps  map[string]*placed
	all    []*placed
	nextID int
}

func validate(f *Flow, d *decoder) {
	v := &validator{d: d, f: f, names: map[string]Pos{}, steps: map[string]*placed{}}
	if f.Version != 1 {
		p := d.at(f, "version", f.Pos)
		if f.Version == 0 {
			v.d.problem(p, "version is required and must be 1")
		} else {
			v.d.problem(p, "unsupported version %d: this agent reads version 1", f.Version)
		}
	}
	if f.Name == "" {
		d.problem(f.Pos, "name is required")
	} else if !flowNameRE.MatchString(f.Name) {
		d.problem(d.at(f, "name", f.Pos), "flow name %q must match [a-z0-9][a-z0-9._-]{0,62}", f.Name)
	}
	for name := range f.Vars {
		if !varNameRE.MatchString(name) {
			d.problem(d.at(f, "vars", f.Pos), "variable name %q must match %s", name, nameRE)
		}
	}
	if len(f.Steps) == 0 {
		d.problem(d.at(f, "steps", f.Pos), "steps is required and must not be empty")
	}
	if p, ok := d.inputs[&f.FailureStrategies]; ok {
		f.StrategiesInput, f.StrategiesInputPos = true, p
	}
	v.strategies("flow", f.FailureStrategies, false)
	v.entries(f.Steps, nil, nil, false)
	v.rollbackList(f.Rollback, "flow", nil)
	v.references()
}

func (v *validator) id() int { v.nextID++; return v.nextID }

func (v *validator) entries(list []Entry, g *Group, parent []slot, inParallel bool) {
	c := v.id()
	for i := range list {
		e := &list[i]
		path := append(append([]slot(nil), parent...), slot{container: c, index: i, parallel: inParallel})
		switch {
		case e.Step != nil:
			v.step(e.Step, g, path, "")
		case e.Group != nil:
			if g != nil {
				v.d.problem(e.Pos, "group %q: a group cannot contain another group", e.Group.Name)
				continue
			}
			v.group(e.Group, path)
		case e.Parallel != nil:
			if inParallel {
				v.d.problem(e.Pos, "a parallel block cannot contain another parallel block")
				continue
			}
			if len(e.Parallel) == 0 {
				v.d.problem(e.Pos, "parallel block is empty")
				continue
			}
			v.entries(e.Parallel, g, path, true)
		}
	}
}

func (v *validator) group(g *Group, path []slot) {
	if g.Name == "" {
		v.d.problem(g.Pos, "group needs a name")
	} else {
		v.name(g.Name, "group", g.Pos)
	}
	ctx := fmt.Sprintf("group %q", g.Name)
	v.when(g, g.When, g.Pos, ctx)
	if len(g.Steps) == 0 {
		v.d.problem(g.Pos, "%s: steps is required and must not be empty", ctx)
	}
	v.notInput(ctx, &g.FailureStrategies)
	v.strategies(ctx, g.FailureStrategies, true)
	v.entries(g.Steps, g, path, g.Parallel)
	v.rollbackList(g.Rollback, g.Name, g)
}

func (v *validator) rollbackList(list []*Step, owner string, g *Group) {
	for i, s := range list {
		if s == nil {
			continue
		}
		p := &placed{step: s, group: g, rollback: owner, order: i}
		v.check(p)
	}
}

func (v *validator) step(s *Step, g *Group, path []slot, rollback string) {
	v.check(&placed{step: s, group: g, path: path, rollback: rollback})
}

func (v *validator) name(name, what string, p Pos) {
	if !stepNameRE.MatchString(name) || len(name) > 63 {
		v.d.problem(p, "%s name %q must match %s (at most 63 characters)", what, name, stepRE)
	}
	if prev, dup := v.names[name]; dup {
		v.d.problem(p, "%s name %q is already used at line %d; names are unique in the whole flow", what, name, prev.Line)
		return
	}
	v.names[name] = p
}

func (v *validator) when(ptr any, w When, def Pos, ctx string) {
	switch w {
	case "", OnSuccess, OnFailure, Always:
	default:
		v.d.problem(v.d.at(ptr, "when", def), "%s: when must be onSuccess, onFailure or always, not %q", ctx, w)
	}
}

func (v *validator) check(p *placed) {
	s := p.step
	d := v.d
	ctx := fmt.Sprintf("step %q", s.Name)
	if s.Name == "" {
		d.problem(s.Pos, "step needs a name")
		ctx = "step"
	} else {
		v.name(s.Name, "step", s.Pos)
		v.steps[s.Name] = p
	}
	v.all = append(v.all, p)
	v.when(s, s.When, s.Pos, ctx)
	var types []string
	for _, t := range []struct {
		name string
		set  bool
	}{
		{TypeFile, s.File != nil}, {TypeScript, s.Script != nil}, {TypeVerify, s.Verify != nil},
		{TypeCompose, s.Compose != nil}, {TypeContainer, s.Container != nil}, {TypeReboot, s.Reboot != nil},
	} {
		if t.set {
			types = append(types, t.name)
		}
	}
	switch len(types) {
	case 0:
		d.problem(s.Pos, "%s: no step type: set exactly one of file, script, verify, compose, container, reboot", ctx)
	case 1:
	default:
		d.problem(s.Pos, "%s: has %s; a step has exactly one type", ctx, strings.Join(types, " and "))
	}
	switch {
	case s.File != nil:
		v.file(ctx, s.File)
	case s.Script != nil:
		v.script(ctx, s.Script)
	case s.Verify != nil:
		v.verify(ctx, s.Verify)
	case s.Compose != nil:
		v.compose(ctx, s.Compose)
	case s.Container != nil:
		v.container(ctx, s.Container)
	}
	v.notInput(ctx, &s.FailureStrategies)
	v.strategies(ctx, s.FailureStrategies, p.group != nil)
	for i := range s.OnFailure {
		v.action(ctx, s, &s.OnFailure[i])
	}
}

func (v *validator) relPath(ptr any, key string, def Pos, ctx, p string) {
	if p == "" {
		return
	}
	if path.IsAbs(p) || path.Clean(p) == ".." || strings.HasPrefix(path.Clean(p), "../") {
		v.d.problem(v.d.at(ptr, key, def), "%s: %s %q must be a relative path inside the flow's directory or bundle", ctx, key, p)
	}
}

func (v *validator) file(ctx string, fs *FileStep) {
	if len(fs.Entries) == 0 {
		v.d.problem(fs.Pos, "%s: file needs at least one entry", ctx)
	}
	dests := map[string]bool{}
	for i := range fs.Entries {
		e := &fs.Entries[i]
		switch {
		case e.Src != "" && e.Content != nil:
			v.d.problem(e.Pos, "%s: a file entry has src or content, not both", ctx)
		case e.Src == "" && e.Content == nil:
			v.d.problem(e.Pos, "%s: a file entry needs src or content", ctx)
		}
		v.relPath(e, "src", e.Pos, ctx, e.Src)
		switch {
		case e.Dest == "":
			v.d.problem(e.Pos, "%s: a file entry needs dest", ctx)
		case !path.IsAbs(e.Dest):
			v.d.problem(v.d.at(e, "dest", e.Pos), "%s: dest %q must be an absolute path", ctx, e.Dest)
		case dests[path.Clean(e.Dest)]:
			v.d.problem(v.d.at(e, "dest", e.Pos), "%s: dest %q is written twice in this step", ctx, e.Dest)
		}
		dests[path.Clean(e.Dest)] = true
		if e.Mode != "" {
			if m, err := strconv.ParseUint(e.Mode, 8, 32); err != nil || m > 0o7777 {
				v.d.problem(v.d.at(e, "mode", e.Pos), "%s: mode %q must be octal, such as \"0644\"", ctx, e.Mode)
			}
		}
		if e.Owner != "" {
			u, g, _ := strings.Cut(e.Owner, ":")
			if u == "" || strings.Contains(g, ":") || strings.ContainsAny(e.Owner, " \t") {
				v.d.problem(v.d.at(e, "owner", e.Pos), "%s: owner %q must be user, user:group or uid:gid", ctx, e.Owner)
			}
		}
		if e.SHA256 != "" {
			if b, err := hex.DecodeString(e.SHA256); err != nil || len(b) != 32 {
				v.d.problem(v.d.at(e, "sha256", e.Pos), "%s: sha256 must be 64 hex digits", ctx)
			}
		}
	}
}

func (v *validator) script(ctx string, sc *Script) {
	if strings.TrimSpace(sc.Run) == "" {
		v.d.problem(sc.Pos, "%s: script needs run", ctx)
	}
	if _, set := v.d.keys[sc]["shell"]; set && strings.TrimSpace(sc.Shell) == "" {
		v.d.problem(v.d.at(sc, "shell", sc.Pos), "%s: shell is empty", ctx)
	}
	for k := range sc.Env {
		if !varNameRE.MatchString(k) {
			v.d.problem(v.d.at(sc, "env", sc.Pos), "%s: environment variable name %q must match %s", ctx, k, nameRE)
		}
	}
	for code, kind := range sc.ErrorTypes {
		p := v.d.at(sc, "errorTypes", sc.Pos)
		if n, err := strconv.Atoi(code); err != nil || n < 1 || n > 255 {
			v.d.problem(p, "%s: errorTypes key %q must be an exit code from 1 to 255", ctx, code)
		}
		if !kind.Valid() {
			v.d.problem(p, "%s: errorTypes %q: %q is not an error type (%s)", ctx, code, kind, kindList())
		}
	}
}

func kindList() string {
	names := make([]string, len(onfailure.Kinds))
	for i, k := range onfailure.Kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

func (v *validator) verify(ctx string, vf *Verify) {
	n := 0
	if vf.HTTP != nil {
		n++
		h := vf.HTTP
		if h.URL == "" {
			v.d.problem(h.Pos, "%s: http needs url", ctx)
		} else if !strings.Contains(h.URL, "${{") {
			u, err := url.Parse(h.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.d.problem(v.d.at(h, "url", h.Pos), "%s: url %q must be an http:// or https:// URL", ctx, h.URL)
			}
		}
		if _, set := v.d.keys[h]["expectStatus"]; set && (h.ExpectStatus < 100 || h.ExpectStatus > 599) {
			v.d.problem(v.d.at(h, "expectStatus", h.Pos), "%s: expectStatus %d is not an HTTP status", ctx, h.ExpectStatus)
		}
	}
	if vf.TCP != nil {
		n++
		if _, _, err := net.SplitHostPort(vf.TCP.Address); err != nil {
			v.d.problem(v.d.at(vf.TCP, "address", vf.TCP.Pos), "%s: tcp address %q must be host:port", ctx, vf.TCP.Address)
		}
	}
	if _, set := v.d.keys[vf]["command"]; set {
		n++
		if strings.TrimSpace(vf.Command) == "" {
			v.d.problem(v.d.at(vf, "command", vf.Pos), "%s: command is empty", ctx)
		}
	}
	if n != 1 {
		v.d.problem(vf.Pos, "%s: verify needs exactly one of http, tcp, command", ctx)
	}
	for _, k := range []string{"interval", "timeout"} {
		if _, set := v.d.keys[vf][k]; set && ((k == "interval" && vf.Interval == 0) || (k == "timeout" && vf.Timeout == 0)) {
			v.d.problem(v.d.at(vf, k, vf.Pos), "%s: %s must be more than zero", ctx, k)
		}
	}
}

func (v *validator) compose(ctx string, c *Compose) {
	if c.Project == "" {
		v.d.problem(c.Pos, "%s: compose needs project", ctx)
	} else if !projectRE.MatchString(c.Project) {
		v.d.problem(v.d.at(c, "project", c.Pos), "%s: project %q must match [a-z0-9][a-z0-9_-]*", ctx, c.Project)
	}
	if c.File == "" {
		v.d.problem(c.Pos, "%s: compose needs file", ctx)
	}
	v.relPath(c, "file", c.Pos, ctx, c.File)
	for _, img := range c.Images {
		v.relPath(c, "images", c.Pos, ctx, img)
	}
}

func (v *validator) container(ctx string, c *Container) {
	if c.Name == "" {
		v.d.problem(c.Pos, "%s: container needs name", ctx)
	}
	if c.Image == "" {
		v.d.problem(c.Pos, "%s: container needs image", ctx)
	}
	v.relPath(c, "imageArchive", c.Pos, ctx, c.ImageArchive)
}

// actionTypes says which step type each built-in rollback action needs.
var actionTypes = map[string]string{
	ActionRevertFiles:              TypeFile,
	ActionRevertComposeFile:        TypeCompose,
	ActionRestartPreviousContainer: TypeContainer,
}

func (v *validator) action(ctx string, s *Step, a *RollbackAction) {
	d := v.d
	at := d.at(a, "action", a.Pos)
	switch a.Action {
	case ActionCommand:
		if strings.TrimSpace(a.Command) == "" {
			d.problem(a.Pos, "%s: the command action needs command:", ctx)
		}
	case ActionScript:
		if a.Script == nil {
			d.problem(a.Pos, "%s: the script action needs script:", ctx)
		} else {
			v.script(ctx, a.Script)
		}
	case ActionRevertFiles, ActionRevertComposeFile, ActionRestartPreviousContainer:
		if t := s.Type(); t != "" && t != actionTypes[a.Action] {
			d.problem(at, "%s: %s is only valid on a %s step", ctx, a.Action, actionTypes[a.Action])
		}
	case "":
		d.problem(a.Pos, "%s: onFailure entry needs action", ctx)
	default:
		d.problem(at, "%s: unknown onFailure action %q (command, script, revertFiles, revertComposeFile, restartPreviousContainer)", ctx, a.Action)
	}
	if a.Command != "" && a.Action != ActionCommand {
		d.problem(d.at(a, "command", a.Pos), "%s: command: is only used with action: command", ctx)
	}
	if a.Script != nil && a.Action != ActionScript {
		d.problem(d.at(a, "script", a.Pos), "%s: script: is only used with action: script", ctx)
	}
	switch a.Trigger {
	case "", ThisStep, AnyStep:
	default:
		d.problem(d.at(a, "trigger", a.Pos), "%s: trigger must be thisStep or anyStep, not %q", ctx, a.Trigger)
	}
}

// notInput refuses `failureStrategies: input` on a step or group: only the
// flow's own list can be given at deploy time (docs/flows.md).
func (v *validator) notInput(ctx string, list *[]Strategy) {
	if p, ok := v.d.inputs[list]; ok {
		v.d.problem(p, "%s: failureStrategies: %s is only allowed at the flow level; a step's or group's strategies are written in the flow", ctx, StrategiesInput)
	}
}

func (v *validator) strategies(ctx string, list []Strategy, inGroup bool) {
	for i := range list {
		s := &list[i]
		d := v.d
		if len(s.Errors) == 0 {
			d.problem(s.Pos, "%s: failure strategy needs errors (error types, or AllErrors)", ctx)
		}
		for _, k := range s.Errors {
			if !k.Valid() && k != onfailure.AllErrors {
				d.problem(d.at(s, "errors", s.Pos), "%s: %q is not an error type (%s, or AllErrors)", ctx, k, kindList())
			}
		}
		at := d.at(s, "action", s.Pos)
		if s.Action == "" {
			d.problem(s.Pos, "%s: failure strategy needs action", ctx)
		} else {
			v.strategyAction(ctx, "action", s.Action, at, inGroup)
		}
		retrying := s.Action == onfailure.Retry || s.Action == onfailure.RetryGroup
		switch {
		case retrying && (s.Retry == nil || s.Retry.Count < 1):
			d.problem(at, "%s: %s needs retry: with count of at least 1", ctx, s.Action)
		case !retrying && s.Retry != nil:
			d.problem(d.at(s, "retry", s.Pos), "%s: retry: is only used with Retry or RetryGroup", ctx)
		}
		if s.Retry != nil && s.Retry.OnExhausted != "" {
			v.followUp(ctx, "onExhausted", s.Retry.OnExhausted, d.at(s.Retry, "onExhausted", at), inGroup)
		}
		manual := s.Action == onfailure.ManualIntervention
		switch {
		case manual && s.Manual == nil:
			d.problem(at, "%s: ManualIntervention needs manual: with timeout and onTimeout", ctx)
		case manual:
			if s.Manual.Timeout <= 0 {
				d.problem(d.at(s, "manual", at), "%s: manual.timeout is required and must be more than zero", ctx)
			}
			if s.Manual.OnTimeout == "" {
				d.problem(d.at(s, "manual", at), "%s: manual.onTimeout is required", ctx)
			} else {
				v.followUp(ctx, "onTimeout", s.Manual.OnTimeout, d.at(s.Manual, "onTimeout", at), inGroup)
			}
		case s.Manual != nil:
			d.problem(d.at(s, "manual", s.Pos), "%s: manual: is only used with ManualIntervention", ctx)
		}
	}
}

// followUp checks an onExhausted or onTimeout action.
func (v *validator) followUp(ctx, key string, a onfailure.Action, p Pos, inGroup bool) {
	switch a {
	case onfailure.Retry, onfailure.RetryGroup, onfailure.ManualIntervention:
		v.d.problem(p, "%s: %s cannot be %s", ctx, key, a)
		return
	}
	v.strategyAction(ctx, key, a, p, inGroup)
}

func (v *validator) strategyAction(ctx, key string, a onfailure.Action, p Pos, inGroup bool) {
	switch {
	case !a.Valid():
		names := make([]string, len(onfailure.Actions))
		for i, x := range onfailure.Actions {
			names[i] = string(x)
		}
		v.d.problem(p, "%s: %s %q is not an action (%s)", ctx, key, a, strings.Join(names, ", "))
	case a.GroupOnly() && !inGroup:
		v.d.problem(p, "%s: %s is only valid inside a group", ctx, a)
	case a == onfailure.RollbackFlow && v.f != nil && !v.f.RollbackOnFailure:
		v.d.problem(p, "%s: RollbackFlow needs rollbackOnFailure: true on the flow", ctx)
	}
}

// references checks every ${{ }} expression where spec 9 expands them.
func (v *validator) references() {
	for _, p := range v.all {
		for _, x := range expandable(p.step) {
			refs, err := ParseRefs(x.text)
			ctx := fmt.Sprintf("step %q", p.step.Name)
			pos := v.d.at(x.owner, x.key, p.step.Pos)
			if err != nil {
				v.d.problem(pos, "%s: %v", ctx, err)
			}
			for _, r := range refs {
				v.reference(ctx, pos, p, r)
			}
		}
	}
}

func (v *validator) reference(ctx string, pos Pos, p *placed, r Ref) {
	switch r.Kind {
	case RefVar:
		if _, ok := v.f.Vars[r.Name]; !ok {
			v.d.problem(pos, "%s: ${{ vars.%s }} is not declared under vars", ctx, r.Name)
		}
	case RefOutput:
		src, ok := v.steps[r.Step]
		switch {
		case !ok:
			v.d.problem(pos, "%s: ${{ %s }}: there is no step %q", ctx, r, r.Step)
		case src.step.Script == nil:
			v.d.problem(pos, "%s: ${{ %s }}: step %q is not a script step and sets no outputs", ctx, r, r.Step)
		case src == p:
			v.d.problem(pos, "%s: ${{ %s }}: a step cannot read its own outputs", ctx, r)
		case !v.runsBefore(src, p):
			v.d.problem(pos, "%s: ${{ %s }}: step %q does not finish before this step starts (it runs later or in parallel)", ctx, r, r.Step)
		}
	}
}

// runsBefore reports whether src always finishes before dst starts.
func (v *validator) runsBefore(src, dst *placed) bool {
	switch {
	case dst.rollback == "":
		return src.rollback == "" && order(src.path, dst.path) < 0
	case src.rollback == dst.rollback:
		return src.order < dst.order
	case src.rollback != "":
		// A group's rollback runs before the flow's rollback.
		return dst.rollback == "flow" && src.rollback != "flow"
	case dst.rollback == "flow":
		return true
	}
	// A group rollback step: steps of the group, and steps before it.
	if src.group == dst.group {
		return true
	}
	var first []slot
	for _, q := range v.all {
		if q.group == dst.group && q.rollback == "" {
			first = q.path
			break
		}
	}
	return first != nil && order(src.path, first) < 0
}

// text is a string in a step where expressions are expanded, and where
// it came from in the document.
type text struct {
	owner any
	key   string
	text  string
}

// expandable lists the strings of a step that spec 9 expands.
func expandable(s *Step) []text {
	var out []text
	script := func(sc *Script) {
		out = append(out, text{sc, "run", sc.Run})
		for _, val := range sc.Env {
			out = append(out, text{sc, "env", val})
		}
	}
	if s.Script != nil {
		script(s.Script)
	}
	if s.File != nil {
		for i := range s.File.Entries {
			if c := s.File.Entries[i].Content; c != nil {
				out = append(out, text{&s.File.Entries[i], "content", *c})
			}
		}
	}
	if s.Verify != nil && s.Verify.HTTP != nil {
		out = append(out, text{s.Verify.HTTP, "url", s.Verify.HTTP.URL})
	}
	for i := range s.OnFailure {
		a := &s.OnFailure[i]
		if a.Command != "" {
			out = append(out, text{a, "command", a.Command})
		}
		if a.Script != nil {
			script(a.Script)
		}
	}
	return out
}

// Refs returns the ${{ }} expressions in the strings of s that are
// expanded when it runs (spec 9), including its onFailure actions'.
func (s *Step) Refs() []Ref {
	var refs []Ref
	for _, x := range expandable(s) {
		r, _ := ParseRefs(x.text)
		refs = append(refs, r...)
	}
	return refs
}
