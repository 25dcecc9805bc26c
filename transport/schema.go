package transport

import (
	"embed"
	"io/fs"
)

//go:embed schemas/*.json
var schemas embed.FS

// Schemas holds the JSON Schemas (draft 2020-12) of the wire, one file per
// message type named after it ("dispatch.json", ...), plus "envelope.json",
// which every message schema includes, and "defs.json", their shared
// definitions. Each file's $id is
// "https://github.com/edgeflow/edgeflow/transport/schemas/NAME"; the files
// refer to each other by relative references, so a validator that loads
// them all under their ids resolves everything.
var Schemas fs.FS = mustSub(schemas, "schemas")

// SchemaBaseURL is the base of every schema's $id.
const SchemaBaseURL = "https://github.com/edgeflow/edgeflow/transport/schemas/"

// SchemaFile returns the name of the schema file in Schemas for messages of
// type t.
func SchemaFile(t Type) string { return string(t) + ".json" }

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err) // dir is a constant that exists
	}
	return sub
}
