package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// BenchmarkIngest measures the ingestion of agent events (one op: one
// event) from 100 devices in batches of DefaultMaxBatch, on a real bbolt
// store (each batch one fsynced commit) and a publisher that returns at
// once:
//
//	go test -run '^$' -bench Ingest -benchmem ./controller/
func BenchmarkIngest(b *testing.B) {
	ctx := context.Background()
	st, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	c, err := New(Options{Data: b.TempDir(), Store: st, Client: &recorder{}, PublicURL: "http://controller.test:8080"})
	if err != nil {
		b.Fatal(err)
	}
	sha := strings.Repeat("a", 64)
	if _, _, err := st.AddBundle(ctx, store.Bundle{SHA256: sha, Size: 1, Flow: "f", Version: 1}); err != nil {
		b.Fatal(err)
	}
	const devices = 100
	var ids []string
	for i := range devices {
		ids = append(ids, fmt.Sprintf("dev-%03d", i))
	}
	dep, err := c.Create(ctx, api.CreateDeployment{Bundle: sha, Devices: ids})
	if err != nil {
		b.Fatal(err)
	}
	seqs := make([]uint64, devices)
	message := func(i int) mqtt.Message {
		d := i % devices
		seqs[d]++
		var body transport.Body = &transport.StepFinished{Deployment: dep.ID, Execution: "ex", Step: fmt.Sprint("s", seqs[d]%20), Attempt: 1, Status: transport.StatusSucceeded, Log: "ok\n"}
		if seqs[d] == 1 {
			body = &transport.Accepted{Deployment: dep.ID, Dispatch: dep.Devices[d].Dispatch, Execution: "ex", Flow: "f"}
		}
		m, err := transport.New(ids[d], body)
		if err != nil {
			b.Fatal(err)
		}
		m.Seq = seqs[d]
		data, err := m.Encode()
		if err != nil {
			b.Fatal(err)
		}
		topic, _ := c.topics.Topic(ids[d], transport.ChannelEvents)
		return mqtt.Message{Topic: topic, Payload: data}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(b.N-done, DefaultMaxBatch)
		b.StopTimer()
		batch := make([]mqtt.Message, n)
		for i := range batch {
			batch[i] = message(done + i)
		}
		b.StartTimer()
		if err := c.Ingest(ctx, batch); err != nil {
			b.Fatal(err)
		}
		done += n
	}
}
