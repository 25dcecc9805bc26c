package engine

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
)

// BenchmarkRun measures the engine's own cost per flow (decisions,
// records, journal encoding) with steps that do nothing, 50 steps of which
// 10 run in a parallel block.
func BenchmarkRun(b *testing.B) {
	var doc strings.Builder
	doc.WriteString("version: 1\nname: bench\nsteps:\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&doc, "  - {name: s%d, script: {run: ok}}\n", i)
	}
	doc.WriteString("  - parallel:\n")
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&doc, "      - {name: p%d, script: {run: ok}}\n", i)
	}
	f, err := flow.Parse("bench.yaml", []byte(doc.String()))
	if err != nil {
		b.Fatal(err)
	}
	h := newHarness(b, Options{})
	b.ReportAllocs()
	for b.Loop() {
		res, err := h.eng.Run(context.Background(), f)
		if err != nil || res.Status != Succeeded {
			b.Fatalf("%v %v", res, err)
		}
	}
}
