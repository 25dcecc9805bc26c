package flow

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a flow document, at a place in it.
type Problem struct {
	File string
	Pos  Pos
	Msg  string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Pos.Line, p.Pos.Col, p.Msg)
}

// Problems is every problem found in a document, in document order. It is
// the error Parse and Load return for an invalid flow.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// IsInvalid reports whether err says a flow document is invalid (as opposed
// to, say, unreadable).
func IsInvalid(err error) bool {
	var ps Problems
	return errors.As(err, &ps)
}

// MaxDocumentSize bounds a flow document; larger ones are refused.
const MaxDocumentSize = 4 << 20

// Load reads, decodes and validates the flow document at path. Relative
// paths in it resolve in its directory.
func Load(path string) (*Flow, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read flow: %w", err)
	}
	if st.Size() > MaxDocumentSize {
		return nil, fmt.Errorf("read flow %s: %d bytes is over the %d byte limit", path, st.Size(), MaxDocumentSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read flow: %w", err)
	}
	f, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("flow directory: %w", err)
	}
	f.Dir = abs
	return f, nil
}

// Parse decodes and validates a flow document; file names it in messages.
// An invalid document returns Problems listing everything wrong with it.
func Parse(file string, data []byte) (*Flow, error) {
	d := &decoder{file: file, keys: map[any]map[string]Pos{}}
	f := &Flow{File: file, Source: append([]byte(nil), data...)}
	doc, dec := d.document(data)
	if doc == nil {
		return nil, d.probs
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.problem(Pos{extra.Line, extra.Column}, "a flow file holds one document; found another")
	}
	d.decode(doc, reflect.ValueOf(f).Elem())
	validate(f, d)
	if err := d.sorted(); err != nil {
		return nil, err
	}
	return f, nil
}

// document reads the first YAML document of data and returns its content
// node and the decoder (for what follows it), or nil after recording why
// it cannot be read.
func (d *decoder) document(data []byte) (*yaml.Node, *yaml.Decoder) {
	if len(data) > MaxDocumentSize {
		d.problem(Pos{1, 1}, "document is %d bytes, over the %d byte limit", len(data), MaxDocumentSize)
		return nil, nil
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		d.syntax(err)
		return nil, nil
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	return doc, dec
}

// sorted returns the problems found, in line and column order, or nil.
func (d *decoder) sorted() error {
	if len(d.probs) == 0 {
		return nil
	}
	sort.SliceStable(d.probs, func(i, j int) bool {
		a, b := d.probs[i].Pos, d.probs[j].Pos
		return a.Line < b.Line || a.Line == b.Line && a.Col < b.Col
	})
	return d.probs
}

// decoder turns a YAML node tree into Go values, collecting problems.
type decoder struct {
	file  string
	probs Problems
	// keys holds, per decoded struct (by pointer), the place of each key's
	// value, so validation can point at the exact value.
	keys map[any]map[string]Pos
	// inputs holds the strategy lists (by pointer) written as `input`,
	// with the place of the word; validation says where that is allowed.
	inputs map[*[]Strategy]Pos
}

func (d *decoder) problem(p Pos, format string, args ...any) {
	d.probs = append(d.probs, Problem{File: d.file, Pos: p, Msg: fmt.Sprintf(format, args...)})
}

// syntax reports a YAML syntax error. yaml.v3 gives a line but no column.
func (d *decoder) syntax(err error) {
	msg := err.Error()
	line := 1
	var rest string
	if _, e := fmt.Sscanf(msg, "yaml: line %d:", &line); e == nil {
		if i := strings.Index(msg, ": "); i >= 0 {
			rest = msg[i+2:]
			if j := strings.Index(rest, ": "); j >= 0 && strings.HasPrefix(rest, "line ") {
				rest = rest[j+2:]
			}
		}
	} else {
		rest = strings.TrimPrefix(msg, "yaml: ")
	}
	if rest == "" {
		rest = msg
	}
	d.problem(Pos{line, 1}, "syntax error: %s", rest)
}

// at returns the place of key's value in the struct ptr, or def.
func (d *decoder) at(ptr any, key string, def Pos) Pos {
	if m, ok := d.keys[ptr]; ok {
		if p, ok := m[key]; ok {
			return p
		}
	}
	return def
}

// nodeDecoder is implemented by types with their own document shape.
type nodeDecoder interface {
	decodeNode(d *decoder, n *yaml.Node)
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	posType      = reflect.TypeOf(Pos{})
	// strategyListType is a failureStrategies list, which may also be
	// written as `input` (see Flow.StrategiesInput).
	strategyListType = reflect.TypeOf([]Strategy(nil))
)

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func posOf(n *yaml.Node) Pos { return Pos{n.Line, n.Column} }

func (d *decoder) decode(n *yaml.Node, v reflect.Value) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if v.CanAddr() {
		if nd, ok := v.Addr().Interface().(nodeDecoder); ok {
			nd.decodeNode(d, n)
			return
		}
	}
	if v.Type() == durationType {
		d.duration(n, v)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" && v.Type().Elem().Kind() != reflect.Struct {
			return
		}
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem())
		v.Set(p)
	case reflect.Struct:
		d.structure(n, v)
	case reflect.Slice:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		if v.Type() == strategyListType && n.Kind == yaml.ScalarNode && n.Tag == "!!str" && n.Value == StrategiesInput && v.CanAddr() {
			if d.inputs == nil {
				d.inputs = map[*[]Strategy]Pos{}
			}
			d.inputs[v.Addr().Interface().(*[]Strategy)] = posOf(n)
			return
		}
		if v.Type() == strategyListType && n.Kind != yaml.SequenceNode {
			d.problem(posOf(n), "expected a list of failure strategies (or %s, on the flow only), got %s", StrategiesInput, kindName(n))
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.problem(posOf(n), "expected a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		if n.Kind != yaml.MappingNode {
			d.problem(posOf(n), "expected a mapping, got %s", kindName(n))
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				d.problem(posOf(k), "expected a key, got %s", kindName(k))
				continue
			}
			if seen[k.Value] {
				d.problem(posOf(k), "duplicate key %q", k.Value)
				continue
			}
			seen[k.Value] = true
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e)
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), e)
		}
		v.Set(m)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.problem(posOf(n), "expected a string, got %s", kindName(n))
			return
		}
		if n.Tag == "!!null" {
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			d.problem(posOf(n), "expected true or false, got %s", kindName(n))
			return
		}
		v.SetBool(b)
	case reflect.Int:
		var i int
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&i) != nil {
			d.problem(posOf(n), "expected a whole number, got %s", kindName(n))
			return
		}
		v.SetInt(int64(i))
	default:
		panic(fmt.Sprintf("flow: no decoding for %s", v.Type()))
	}
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.problem(posOf(n), "expected a duration such as 30s or 5m, got %s", kindName(n))
		return
	}
	dur, err := time.ParseDuration(n.Value)
	if err != nil {
		hint := ""
		if n.Tag == "!!int" || n.Tag == "!!float" {
			hint = " (give a unit: 30s, 5m, 1h)"
		}
		d.problem(posOf(n), "bad duration %q%s", n.Value, hint)
		return
	}
	if dur < 0 {
		d.problem(posOf(n), "duration %q is negative", n.Value)
		return
	}
	v.SetInt(int64(dur))
}

// field is one decodable field of a struct, found by its yaml tag.
type field struct {
	index []int
}

func fieldsOf(t reflect.Type) (map[string]field, []string) {
	fields := map[string]field{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("yaml")
		if tag == "-" || sf.Type == posType || !sf.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "inline" {
			sub, subNames := fieldsOf(sf.Type)
			for k, f := range sub {
				fields[k] = field{index: append([]int{i}, f.index...)}
			}
			names = append(names, subNames...)
			continue
		}
		if name == "" {
			continue
		}
		fields[name] = field{index: []int{i}}
		names = append(names, name)
	}
	return fields, names
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value) {
	if f := v.FieldByName("Pos"); f.IsValid() && f.Type() == posType {
		f.Set(reflect.ValueOf(posOf(n)))
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.problem(posOf(n), "expected a mapping, got %s", kindName(n))
		return
	}
	fields, names := fieldsOf(v.Type())
	keyPos := map[string]Pos{}
	if v.CanAddr() {
		d.keys[v.Addr().Interface()] = keyPos
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.problem(posOf(k), "expected a key, got %s", kindName(k))
			continue
		}
		f, ok := fields[k.Value]
		if !ok {
			d.problem(posOf(k), "unknown key %q%s", k.Value, suggest(k.Value, names))
			continue
		}
		if _, dup := keyPos[k.Value]; dup {
			d.problem(posOf(k), "duplicate key %q", k.Value)
			continue
		}
		keyPos[k.Value] = posOf(val)
		d.decode(val, v.FieldByIndex(f.index))
	}
}

// suggest returns ` (did you mean "x"?)` for the known name closest to
// name, when one is close enough to be a likely typo.
func suggest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if dist := editDistance(strings.ToLower(name), strings.ToLower(k)); dist < bestD {
			best, bestD = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// decodeNode reads a steps-list entry: a step, `group:` or `parallel:`.
func (e *Entry) decodeNode(d *decoder, n *yaml.Node) {
	e.Pos = posOf(n)
	if n.Kind != yaml.MappingNode {
		d.problem(posOf(n), "expected a step, group: or parallel:, got %s", kindName(n))
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Value != "group" && k.Value != "parallel" {
			continue
		}
		if len(n.Content) > 2 {
			d.problem(posOf(n), "a %s entry holds only the %s key; put its other keys inside it", k.Value, k.Value)
			return
		}
		val := n.Content[i+1]
		if k.Value == "group" {
			e.Group = &Group{}
			d.decode(val, reflect.ValueOf(e.Group).Elem())
			return
		}
		d.decode(val, reflect.ValueOf(&e.Parallel).Elem())
		if e.Parallel == nil {
			e.Parallel = []Entry{}
		}
		return
	}
	e.Step = &Step{}
	d.decode(n, reflect.ValueOf(e.Step).Elem())
}

// decodeNode reads a file step: a list of entries, or one entry.
func (f *FileStep) decodeNode(d *decoder, n *yaml.Node) {
	f.Pos = posOf(n)
	if n.Kind == yaml.MappingNode {
		f.Entries = make([]FileEntry, 1)
		d.decode(n, reflect.ValueOf(&f.Entries[0]).Elem())
		return
	}
	d.decode(n, reflect.ValueOf(&f.Entries).Elem())
}
