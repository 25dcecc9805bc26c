package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
)

var ctx = context.Background()

func open(t *testing.T, dir string) *store.Bolt {
	t.Helper()
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var t0 = time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)

func TestRoundTripAndReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)

	b := store.Bundle{SHA256: strings.Repeat("a", 64), Size: 10, Flow: "web", Version: 2, Created: t0}
	got, created, err := s.AddBundle(ctx, b)
	if err != nil || !created || got != b {
		t.Fatalf("add bundle: %+v %v %v", got, created, err)
	}
	again := b
	again.Created = t0.Add(time.Hour)
	if got, created, err := s.AddBundle(ctx, again); err != nil || created || got != b {
		t.Fatalf("add the same bundle again: %+v %v %v, want the first record", got, created, err)
	}

	dep := store.Deployment{ID: "dep-1", Bundle: b.SHA256, Devices: 2, Status: api.DeploymentRunning, Created: t0,
		Counts: map[string]int{api.DevicePending: 2}, FeedSeq: 1}
	runs := []store.Run{
		{Deployment: "dep-1", DeviceRun: api.DeviceRun{Device: "dev-1", Status: api.DevicePending, Dispatch: "d1", Updated: t0}},
		{Deployment: "dep-1", DeviceRun: api.DeviceRun{Device: "dev-2", Status: api.DevicePending, Dispatch: "d2", Updated: t0}},
	}
	cmds := []store.Command{
		{ID: "d2", Type: transport.TypeDispatch, Device: "dev-2", Deployment: "dep-1", Time: t0},
		{ID: "d1", Type: transport.TypeDispatch, Device: "dev-1", Deployment: "dep-1", Time: t0},
	}
	must(t, s.Commit(ctx, store.Batch{
		Deployments: []store.Deployment{dep}, Runs: runs, PutCommands: cmds,
		Feed:    []store.FeedEvent{{Deployment: "dep-1", Event: api.Event{Seq: 1, Kind: api.EventDeployment, Time: t0}}},
		Devices: []api.Device{{ID: "dev-1", Status: transport.Online, Labels: map[string]string{"site": "a"}, LastSeen: t0}},
	}))

	// An event: seq 0 → 1, the run, a feed event, the dispatch done.
	msg := json.RawMessage(`{"v":1}`)
	run := runs[0]
	run.Status = string(transport.StatusRunning)
	must(t, s.Commit(ctx, store.Batch{
		Seqs:           []store.SeqUpdate{{Device: "dev-1", To: store.DeviceSeq{Stream: "s1", Seq: 1}}},
		Events:         []store.Event{{Deployment: "dep-1", Device: "dev-1", Seq: 1, Type: transport.TypeAccepted, Received: t0, Message: msg}},
		Runs:           []store.Run{run},
		Feed:           []store.FeedEvent{{Deployment: "dep-1", Event: api.Event{Seq: 2, Kind: api.EventDevice, Time: t0}}},
		DeleteCommands: []store.CommandKey{{Device: "dev-1", Deployment: "dep-1", Type: transport.TypeDispatch}},
	}))

	// A batch from a stale view is refused whole.
	err = s.Commit(ctx, store.Batch{
		Seqs:    []store.SeqUpdate{{Device: "dev-1", To: store.DeviceSeq{Stream: "s1", Seq: 1}}},
		Devices: []api.Device{{ID: "dev-9"}},
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale seq: %v, want ErrConflict", err)
	}
	err = s.Commit(ctx, store.Batch{Feed: []store.FeedEvent{{Deployment: "dep-1", Event: api.Event{Seq: 2}}}, Devices: []api.Device{{ID: "dev-9"}}})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("feed seq taken: %v, want ErrConflict", err)
	}
	if _, err := s.Device(ctx, "dev-9"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused batch wrote a device: %v", err)
	}

	check := func(s *store.Bolt) {
		t.Helper()
		if seq, err := s.LastSeq(ctx, "dev-1"); err != nil || seq != (store.DeviceSeq{Stream: "s1", Seq: 1}) {
			t.Fatalf("last seq: %+v %v", seq, err)
		}
		if seq, err := s.LastSeq(ctx, "dev-2"); err != nil || seq != (store.DeviceSeq{}) {
			t.Fatalf("last seq of a device without events: %+v %v", seq, err)
		}
		d, err := s.Deployment(ctx, "dep-1")
		if err != nil || d.Counts[api.DevicePending] != 2 || d.FeedSeq != 1 || !d.Created.Equal(t0) {
			t.Fatalf("deployment: %+v %v", d, err)
		}
		rs, err := s.Runs(ctx, "dep-1")
		if err != nil || len(rs) != 2 || rs[0].Device != "dev-1" || rs[0].Status != "Running" || rs[1].Dispatch != "d2" {
			t.Fatalf("runs: %+v %v", rs, err)
		}
		if r, err := s.Run(ctx, "dep-1", "dev-2"); err != nil || r.Dispatch != "d2" {
			t.Fatalf("run: %+v %v", r, err)
		}
		if _, err := s.Run(ctx, "dep-1", "dev-3"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("run of an unknown device: %v", err)
		}
		if _, err := s.Run(ctx, "dep-2", "dev-1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("run of an unknown deployment: %v", err)
		}
		es, err := s.Events(ctx, "dep-1", "dev-1")
		if err != nil || len(es) != 1 || string(es[0].Message) != `{"v":1}` {
			t.Fatalf("events: %+v %v", es, err)
		}
		feed, err := s.Feed(ctx, "dep-1", 0, 0)
		if err != nil || len(feed) != 2 || feed[0].Seq != 1 || feed[1].Seq != 2 {
			t.Fatalf("feed: %+v %v", feed, err)
		}
		if feed, _ := s.Feed(ctx, "dep-1", 1, 0); len(feed) != 1 || feed[0].Seq != 2 {
			t.Fatalf("feed after 1: %+v", feed)
		}
		if feed, _ := s.Feed(ctx, "dep-1", 0, 1); len(feed) != 1 || feed[0].Seq != 1 {
			t.Fatalf("feed limit 1: %+v", feed)
		}
		if feed, err := s.Feed(ctx, "nope", 0, 0); err != nil || len(feed) != 0 {
			t.Fatalf("feed of an unknown deployment: %+v %v", feed, err)
		}
		cs, err := s.Commands(ctx, "")
		if err != nil || len(cs) != 1 || cs[0].ID != "d2" {
			t.Fatalf("commands: %+v %v", cs, err)
		}
		if cs, _ := s.Commands(ctx, "dev-1"); len(cs) != 0 {
			t.Fatalf("commands of dev-1: %+v", cs)
		}
		if cs, _ := s.Commands(ctx, "dev-2"); len(cs) != 1 {
			t.Fatalf("commands of dev-2: %+v", cs)
		}
		ds, err := s.Devices(ctx)
		if err != nil || len(ds) != 1 || ds[0].Labels["site"] != "a" {
			t.Fatalf("devices: %+v %v", ds, err)
		}
		bs, err := s.Bundles(ctx)
		if err != nil || len(bs) != 1 || bs[0] != b {
			t.Fatalf("bundles: %+v %v", bs, err)
		}
	}
	check(s)
	must(t, s.Close())
	check(open(t, dir))
}

func TestCommandPrefixIsExact(t *testing.T) {
	s := open(t, t.TempDir())
	must(t, s.Commit(ctx, store.Batch{PutCommands: []store.Command{
		{ID: "1", Type: transport.TypeDispatch, Device: "dev", Deployment: "a"},
		{ID: "2", Type: transport.TypeDispatch, Device: "dev-1", Deployment: "a"},
		{ID: "3", Type: transport.TypeCancel, Device: "dev", Deployment: "a"},
	}}))
	cs, err := s.Commands(ctx, "dev")
	if err != nil || len(cs) != 2 || cs[0].ID != "3" || cs[1].ID != "1" {
		t.Fatalf("commands of dev: %+v %v", cs, err)
	}
}

func TestOrder(t *testing.T) {
	s := open(t, t.TempDir())
	var deps []store.Deployment
	for i, id := range []string{"b", "a", "c"} {
		deps = append(deps, store.Deployment{ID: id, Created: t0.Add(time.Duration(i) * time.Minute)})
	}
	must(t, s.Commit(ctx, store.Batch{Deployments: deps}))
	ds, err := s.Deployments(ctx)
	if err != nil || len(ds) != 3 || ds[0].ID != "c" || ds[1].ID != "a" || ds[2].ID != "b" {
		t.Fatalf("deployments, want newest first: %+v %v", ds, err)
	}
}

func TestInUse(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	_, err := store.Open(dir, store.Options{OpenTimeout: 50 * time.Millisecond})
	if !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "another controller holds "+dir) {
		t.Fatalf("second open: %v", err)
	}
}

func TestSchemaVersion(t *testing.T) {
	for _, c := range []struct {
		name    string
		version string
		want    error
	}{
		{"newer", "2", store.ErrNewerSchema},
		{"garbage", "x", store.ErrUnknownSchema},
		{"zero", "0", store.ErrUnknownSchema},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, store.FileName)
			db, err := bolt.Open(path, 0o600, nil)
			must(t, err)
			must(t, db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket([]byte("meta"))
				if err != nil {
					return err
				}
				return b.Put([]byte("schema"), []byte(c.version))
			}))
			must(t, db.Close())
			before, _ := os.ReadFile(path)
			_, err = store.Open(dir, store.Options{})
			if !errors.Is(err, c.want) {
				t.Fatalf("open: %v, want %v", err, c.want)
			}
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Fatal("a refused file was changed")
			}
		})
	}

	// Another program's bbolt file.
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, nil)
	must(t, err)
	must(t, db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }))
	must(t, db.Close())
	if _, err := store.Open(dir, store.Options{}); !errors.Is(err, store.ErrUnknownSchema) || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("foreign file: %v", err)
	}
}

// TestRunsAfter pages through a deployment's runs by device id, as the
// rollout's cursor does; the rollout state of a deployment and a command's
// guidance survive a reopen.
func TestRunsAfter(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	var runs []store.Run
	for _, dev := range []string{"d-3", "d-1", "d-2", "d-10"} {
		runs = append(runs, store.Run{Deployment: "x", DeviceRun: api.DeviceRun{Device: dev, Status: api.DeviceWaiting}})
	}
	until := t0.Add(time.Hour)
	must(t, s.Commit(ctx, store.Batch{Runs: runs,
		Deployments: []store.Deployment{{ID: "x", Rollout: &api.Rollout{Waves: []string{"1", "100%"}, Pause: "1h"},
			Waves: []store.Wave{{Target: 1, Started: &t0, Counts: map[string]int{"Succeeded": 1}}, {Target: 4}},
			Wave:  1, Cursor: "d-1", Dispatched: 1, PausedUntil: &until, Tally: store.Tally{Finished: 1},
			Audit: []api.AuditEntry{{Time: t0, By: "a", Action: api.AuditPromote, Wave: 2}}}},
		PutCommands: []store.Command{{ID: "g", Type: transport.TypeGuide, Device: "d-1", Deployment: "x", Step: "s", Action: "Retry"}},
	}))
	ids := func(rs []store.Run) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Device)
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		after string
		limit int
		want  string
	}{
		{"", 0, "d-1 d-10 d-2 d-3"},
		{"", 2, "d-1 d-10"},
		{"d-1", 2, "d-10 d-2"},
		{"d-10", 0, "d-2 d-3"},
		{"d-15", 0, "d-2 d-3"}, // not a device: the ones after it
		{"d-3", 0, ""},
	} {
		rs, err := s.RunsAfter(ctx, "x", c.after, c.limit)
		if err != nil || ids(rs) != c.want {
			t.Errorf("after %q limit %d: %q %v, want %q", c.after, c.limit, ids(rs), err, c.want)
		}
	}
	if rs, err := s.RunsAfter(ctx, "nope", "", 0); err != nil || len(rs) != 0 {
		t.Errorf("unknown deployment: %v %v", rs, err)
	}
	s.Close()
	s = open(t, dir)
	d, err := s.Deployment(ctx, "x")
	if err != nil || d.Cursor != "d-1" || d.Waves[0].Counts["Succeeded"] != 1 || !d.PausedUntil.Equal(until) || d.Tally.Finished != 1 || len(d.Audit) != 1 || d.Rollout.Pause != "1h" {
		t.Fatalf("deployment after reopen: %+v %v", d, err)
	}
	cs, err := s.Commands(ctx, "d-1")
	if err != nil || len(cs) != 1 || cs[0].Step != "s" || cs[0].Action != "Retry" {
		t.Fatalf("guide command: %+v %v", cs, err)
	}
}
