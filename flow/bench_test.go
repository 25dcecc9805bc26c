package flow

import (
	"os"
	"testing"
)

// BenchmarkParse decodes and validates the spec's example flow.
func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile("../testdata/flows/spec-example.yaml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("spec-example.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}
