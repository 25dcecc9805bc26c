package transport_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/internal/schematest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// goldenDir holds the golden example messages, the protocol's interop
// examples.
const goldenDir = "../testdata/messages"

type validators = *schematest.Validators

func compile(t *testing.T) validators { return schematest.Compile(t) }

func TestEmittedMessagesMatchSchemas(t *testing.T) {
	vs := compile(t)
	for name, body := range bodies() {
		t.Run(name, func(t *testing.T) {
			_, data := encoded(t, body, 1)
			vs.Validate(t, data)
		})
	}
}

func TestGoldenMessages(t *testing.T) {
	vs := compile(t)
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("golden messages: %v %v", files, err)
	}
	seen := map[transport.Type]bool{}
	var topics transport.Topics
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var env struct {
				Type   transport.Type `json:"type"`
				Device string         `json:"device"`
			}
			if err := json.Unmarshal(data, &env); err != nil {
				t.Fatal(err)
			}
			topic, err := topics.Topic(env.Device, env.Type.Channel())
			if err != nil {
				t.Fatal(err)
			}
			m, err := topics.Decode(topic, data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			seen[m.Type] = true
			// Golden files with fields from the future pass the published
			// schemas; the others document every field they use.
			future := strings.Contains(f, "future")
			if err := vs.Check(data, !future); err != nil {
				t.Errorf("schemas refuse %s:\n%v", data, err)
			}
			if future && vs.Check(data, true) == nil {
				t.Error("the strict schemas accept fields they do not document")
			}
			// What the code emits for the decoded message is valid too.
			again, err := m.Encode()
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			vs.Validate(t, again)
		})
	}
	for _, ty := range transport.Types {
		if !seen[ty] {
			t.Errorf("no golden message of type %s in %s", ty, goldenDir)
		}
	}
}

// TestSchemasAgreeWithDecode: what Decode refuses, the schemas refuse too,
// for the refusals a schema can express.
func TestSchemasAgreeWithDecode(t *testing.T) {
	vs := compile(t)
	for _, tc := range []struct {
		name string
		edit func(m map[string]any)
	}{
		{"newer version", func(m map[string]any) { m["v"] = 2 }},
		{"unknown type", func(m map[string]any) { m["type"] = "reboot" }},
		{"unsafe device", func(m map[string]any) { m["device"] = "a+b" }},
		{"control device", func(m map[string]any) { m["device"] = "a\x00b" }},
		{"bad time", func(m map[string]any) { m["time"] = "2025-13-01" }},
		{"event without seq", func(m map[string]any) { delete(m, "seq") }},
		{"seq on presence", func(m map[string]any) {
			m["type"] = "presence"
			m["body"] = map[string]any{"status": "online"}
		}},
		{"missing field", func(m map[string]any) { delete(m["body"].(map[string]any), "step") }},
		{"attempt 0", func(m map[string]any) { m["body"].(map[string]any)["attempt"] = 0 }},
		{"bad kind", func(m map[string]any) {
			m["type"] = "rejected"
			m["body"] = map[string]any{"deployment": "d", "dispatch": "m", "error": map[string]any{"type": "Oops", "message": ""}}
		}},
		{"running is not final", func(m map[string]any) {
			m["type"] = "flow-finished"
			m["body"] = map[string]any{"deployment": "d", "execution": "e", "flow": "f", "status": "Running"}
		}},
		{"bad sha256", func(m map[string]any) {
			m["type"], m["seq"] = "dispatch", nil
			delete(m, "seq")
			m["body"] = map[string]any{"deployment": "d", "url": "https://x/b", "sha256": "ABC", "size": 1}
		}},
		{"guided failure without timeout", func(m map[string]any) {
			m["type"] = "dispatch"
			delete(m, "seq")
			m["body"] = map[string]any{"deployment": "d", "url": "https://x/b", "sha256": strings.Repeat("a", 64), "size": 1,
				"guidedFailure": map[string]any{"onTimeout": "Abort"}}
		}},
		{"guided failure timeout 0", func(m map[string]any) {
			m["type"] = "dispatch"
			delete(m, "seq")
			m["body"] = map[string]any{"deployment": "d", "url": "https://x/b", "sha256": strings.Repeat("a", 64), "size": 1,
				"guidedFailure": map[string]any{"timeoutSeconds": 0}}
		}},
		{"guided failure timeout over the cap", func(m map[string]any) {
			m["type"] = "dispatch"
			delete(m, "seq")
			m["body"] = map[string]any{"deployment": "d", "url": "https://x/b", "sha256": strings.Repeat("a", 64), "size": 1,
				"guidedFailure": map[string]any{"timeoutSeconds": transport.MaxGuidedTimeoutSeconds + 1}}
		}},
		{"guided failure onTimeout Retry", func(m map[string]any) {
			m["type"] = "dispatch"
			delete(m, "seq")
			m["body"] = map[string]any{"deployment": "d", "url": "https://x/b", "sha256": strings.Repeat("a", 64), "size": 1,
				"guidedFailure": map[string]any{"timeoutSeconds": 60, "onTimeout": "Retry"}}
		}},
		{"rolled-back refused without error", func(m map[string]any) {
			m["type"] = "rolled-back"
			m["body"] = map[string]any{"deployment": "d", "execution": "e", "status": "Failed"}
		}},
		{"rolled-back with a step status", func(m map[string]any) {
			m["type"] = "rolled-back"
			m["body"] = map[string]any{"deployment": "d", "execution": "e", "status": "Succeeded"}
		}},
		{"rollback without deployment", func(m map[string]any) {
			m["type"] = "rollback"
			delete(m, "seq")
			m["body"] = map[string]any{"by": "x"}
		}},
		{"paused nothing", func(m map[string]any) {
			m["type"] = "paused"
			m["body"] = map[string]any{"deployment": "d", "execution": "e", "step": ""}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.edit(m)
			data, _ := json.Marshal(m)
			if _, err := transport.DecodeMessage(data); err == nil {
				t.Errorf("Decode accepted %s", data)
			}
			if vs.Check(data, false) == nil {
				t.Errorf("schemas accepted %s", data)
			}
		})
	}
}

// TestSchemaEnumsMatchCode keeps the closed sets of the schemas those of
// the code.
func TestSchemaEnumsMatchCode(t *testing.T) {
	read := func(file string) map[string]any {
		data, err := fs.ReadFile(transport.Schemas, file)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return doc
	}
	enum := func(v any) []string {
		var out []string
		for _, x := range v.(map[string]any)["enum"].([]any) {
			out = append(out, x.(string))
		}
		sort.Strings(out)
		return out
	}
	strs := func(vs ...any) []string {
		var out []string
		for _, v := range vs {
			rv := reflect.ValueOf(v)
			for i := 0; i < rv.Len(); i++ {
				out = append(out, rv.Index(i).String())
			}
		}
		sort.Strings(out)
		return out
	}
	defs := read("defs.json")["$defs"].(map[string]any)
	guided := read("dispatch.json")["properties"].(map[string]any)["body"].(map[string]any)["properties"].(map[string]any)["guidedFailure"].(map[string]any)["properties"].(map[string]any)
	if max := guided["timeoutSeconds"].(map[string]any)["maximum"]; max != float64(transport.MaxGuidedTimeoutSeconds) {
		t.Errorf("guidedFailure.timeoutSeconds: schema maximum %v, code %d", max, transport.MaxGuidedTimeoutSeconds)
	}
	env := read("envelope.json")["properties"].(map[string]any)
	var final []transport.Status
	for _, s := range transport.Statuses {
		if s.Done() {
			final = append(final, s)
		}
	}
	for _, c := range []struct {
		name      string
		got, want []string
	}{
		{"types", enum(env["type"]), strs(transport.Types)},
		{"kinds", enum(defs["kind"]), strs(onfailure.Kinds)},
		{"statuses", enum(defs["status"]), strs(transport.Statuses)},
		{"final statuses", enum(defs["finalStatus"]), strs(final)},
		{"actions", enum(defs["action"]), strs(onfailure.Actions, []onfailure.Action{onfailure.Exclude})},
		{"guidance actions", enum(defs["guidanceAction"]), strs(onfailure.GuidanceActions)},
		{"guided failure onTimeout", enum(guided["onTimeout"]), strs(onfailure.TimeoutActions)},
		{"strategy actions", enum(defs["strategyAction"]), strs(onfailure.Actions)},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: schema %v, code %v", c.name, c.got, c.want)
		}
	}
	// One schema per type, and nothing else but the envelope and defs.
	files, _ := fs.Glob(transport.Schemas, "*.json")
	want := []string{"defs.json", "envelope.json"}
	for _, ty := range transport.Types {
		want = append(want, transport.SchemaFile(ty))
		if c := read(transport.SchemaFile(ty))["properties"].(map[string]any)["type"].(map[string]any)["const"]; c != string(ty) {
			t.Errorf("%s: type const %v", transport.SchemaFile(ty), c)
		}
	}
	sort.Strings(want)
	if !reflect.DeepEqual(files, want) {
		t.Errorf("schema files %v, want %v", files, want)
	}
}

// TestProtocolDocExamples: every JSON example in docs/protocol.md is a
// message that decodes and that the schemas accept, field by field.
func TestProtocolDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	vs := compile(t)
	blocks := strings.Split(string(doc), "```json\n")[1:]
	if len(blocks) < len(transport.Types) {
		t.Fatalf("docs/protocol.md has %d JSON examples for %d types", len(blocks), len(transport.Types))
	}
	seen := map[transport.Type]bool{}
	for i, b := range blocks {
		example, _, ok := strings.Cut(b, "```")
		if !ok {
			t.Fatalf("example %d is not closed", i+1)
		}
		m, err := transport.DecodeMessage([]byte(example))
		if err != nil {
			t.Errorf("example %d: %v\n%s", i+1, err, example)
			continue
		}
		seen[m.Type] = true
		vs.Validate(t, []byte(example))
	}
	for _, ty := range transport.Types {
		if !seen[ty] {
			t.Errorf("docs/protocol.md has no example of %s", ty)
		}
	}
}
