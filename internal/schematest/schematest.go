// Package schematest validates protocol messages against the JSON Schemas
// of docs/protocol.md (transport.Schemas), for the tests of every package
// that emits messages: the transport itself, the agent and the controller.
package schematest

import (
	"bytes"
	"fmt"
	"io/fs"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/edgeflow/edgeflow/transport"
)

// Validators holds the embedded schemas compiled as published (loose) and
// with "unevaluatedProperties": false added to every object schema that
// lists properties (strict): a message valid under the strict schemas has
// no field the schemas do not document.
type Validators struct {
	loose, strict map[string]*jsonschema.Schema
}

// Compile compiles the schemas; it fails t if they do not compile.
func Compile(t testing.TB) *Validators {
	t.Helper()
	files, err := fs.Glob(transport.Schemas, "*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("schemas: %v %v", files, err)
	}
	build := func(strict bool) map[string]*jsonschema.Schema {
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		for _, f := range files {
			data, err := fs.ReadFile(transport.Schemas, f)
			if err != nil {
				t.Fatal(err)
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if id := doc.(map[string]any)["$id"]; id != transport.SchemaBaseURL+f {
				t.Errorf("%s: $id %v", f, id)
			}
			if strict {
				tighten(doc, true)
			}
			if err := c.AddResource(transport.SchemaBaseURL+f, doc); err != nil {
				t.Fatal(err)
			}
		}
		out := map[string]*jsonschema.Schema{}
		for _, f := range files {
			s, err := c.Compile(transport.SchemaBaseURL + f)
			if err != nil {
				t.Fatalf("compile %s: %v", f, err)
			}
			out[f] = s
		}
		return out
	}
	return &Validators{loose: build(false), strict: build(true)}
}

func tighten(v any, root bool) {
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v["properties"]; ok && (root || v["type"] == "object") {
			v["unevaluatedProperties"] = false
		}
		for k, x := range v {
			if k != "const" && k != "enum" {
				tighten(x, false)
			}
		}
	case []any:
		for _, x := range v {
			tighten(x, false)
		}
	}
}

// Validate fails t (without stopping it) when data is not valid under the
// strict schemas: the envelope's and its type's.
func (vs *Validators) Validate(t testing.TB, data []byte) {
	t.Helper()
	if err := vs.Check(data, true); err != nil {
		t.Errorf("the schemas refuse %s:\n%v", data, err)
	}
}

// Check validates data against the envelope schema and its type's schema,
// strict or as published.
func (vs *Validators) Check(data []byte, strict bool) error {
	set := vs.loose
	if strict {
		set = vs.strict
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	obj, _ := inst.(map[string]any)
	ty, _ := obj["type"].(string)
	for _, f := range []string{"envelope.json", transport.SchemaFile(transport.Type(ty))} {
		s := set[f]
		if s == nil {
			return fmt.Errorf("no schema %s", f)
		}
		if err := s.Validate(inst); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}
