package flow

import (
	"fmt"
	"regexp"
	"strings"
)

// RefKind is what a ${{ }} expression refers to (spec 9).
type RefKind string

// The expressions of spec 9.
const (
	RefVar    RefKind = "vars"   // ${{ vars.NAME }}
	RefDevice RefKind = "device" // ${{ device.id }}
	RefLabel  RefKind = "label"  // ${{ device.labels.NAME }}
	RefOutput RefKind = "output" // ${{ steps.STEP.outputs.NAME }}
)

// Ref is one ${{ }} expression.
type Ref struct {
	Kind RefKind
	Name string // variable, label or output name
	Step string // for RefOutput
	// Offset is the byte offset of "${{" in the string.
	Offset int
}

func (r Ref) String() string {
	switch r.Kind {
	case RefVar:
		return "vars." + r.Name
	case RefDevice:
		return "device.id"
	case RefLabel:
		return "device.labels." + r.Name
	}
	return "steps." + r.Step + ".outputs." + r.Name
}

var (
	nameRE   = `[A-Za-z_][A-Za-z0-9_]*`
	labelRE  = `[A-Za-z0-9_.\-/]+`
	stepRE   = `[A-Za-z0-9][A-Za-z0-9_-]*`
	varRefRE = regexp.MustCompile(`^vars\.(` + nameRE + `)$`)
	labRefRE = regexp.MustCompile(`^device\.labels\.(` + labelRE + `)$`)
	outRefRE = regexp.MustCompile(`^steps\.(` + stepRE + `)\.outputs\.(` + nameRE + `)$`)
)

// ParseRefs finds every ${{ }} expression in s. An expression that is not
// one of spec 9's forms, or an unclosed one, is an error.
func ParseRefs(s string) ([]Ref, error) {
	var refs []Ref
	err := scan(s, func(start, _ int, r Ref) error {
		r.Offset = start
		refs = append(refs, r)
		return nil
	})
	return refs, err
}

// scan calls fn for each expression in s with its byte range.
func scan(s string, fn func(start, end int, r Ref) error) error {
	off := 0
	for {
		i := strings.Index(s[off:], "${{")
		if i < 0 {
			return nil
		}
		start := off + i
		j := strings.Index(s[start:], "}}")
		if j < 0 {
			return fmt.Errorf("unclosed ${{ at offset %d", start)
		}
		r, err := parseRef(strings.TrimSpace(s[start+3 : start+j]))
		if err != nil {
			return err
		}
		off = start + j + 2
		if err := fn(start, off, r); err != nil {
			return err
		}
	}
}

func parseRef(body string) (Ref, error) {
	if body == "device.id" {
		return Ref{Kind: RefDevice}, nil
	}
	if m := varRefRE.FindStringSubmatch(body); m != nil {
		return Ref{Kind: RefVar, Name: m[1]}, nil
	}
	if m := labRefRE.FindStringSubmatch(body); m != nil {
		return Ref{Kind: RefLabel, Name: m[1]}, nil
	}
	if m := outRefRE.FindStringSubmatch(body); m != nil {
		return Ref{Kind: RefOutput, Step: m[1], Name: m[2]}, nil
	}
	return Ref{}, fmt.Errorf("unknown expression ${{ %s }}: use vars.NAME, device.id, device.labels.NAME or steps.STEP.outputs.NAME", body)
}

// Expand replaces every ${{ }} expression in s with lookup's value for it.
func Expand(s string, lookup func(Ref) (string, error)) (string, error) {
	if !strings.Contains(s, "${{") {
		return s, nil
	}
	var b strings.Builder
	last := 0
	err := scan(s, func(start, end int, r Ref) error {
		v, err := lookup(r)
		if err != nil {
			return err
		}
		b.WriteString(s[last:start])
		b.WriteString(v)
		last = end
		return nil
	})
	if err != nil {
		return "", err
	}
	b.WriteString(s[last:])
	return b.String(), nil
}
