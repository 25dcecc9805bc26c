package journal

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func appendEvents(t *testing.T, j *Journal, n int) {
	t.Helper()
	for range n {
		err := j.Update(func(tx *Tx) error {
			_, err := tx.AppendEvent(func(seq uint64) ([]byte, error) { return fmt.Appendf(nil, "event %d", seq), nil })
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func seqs(evs []OutboxEvent) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.Seq)
		if string(e.Data) != fmt.Sprintf("event %d", e.Seq) {
			panic(fmt.Sprintf("event %d holds %q", e.Seq, e.Data))
		}
	}
	return out
}

func TestOutboxSequenceAckAndReopen(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	appendEvents(t, j, 5)
	evs, err := j.Outbox(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(evs); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("outbox = %v, want 1..5", got)
	}
	if evs, _ := j.Outbox(2, 2); !slices.Equal(seqs(evs), []uint64{3, 4}) {
		t.Fatalf("Outbox(2, 2) = %v, want 3 4", seqs(evs))
	}
	if n, err := j.Ack(3); err != nil || n != 3 {
		t.Fatalf("Ack(3) = %d, %v; want 3 deleted", n, err)
	}
	// A repeated or older ack changes nothing; an ack ahead is refused.
	if n, err := j.Ack(2); err != nil || n != 0 {
		t.Fatalf("Ack(2) after Ack(3) = %d, %v; want 0, nil", n, err)
	}
	if _, err := j.Ack(9); !errors.Is(err, ErrAckAhead) {
		t.Fatalf("Ack(9) with 5 given = %v, want ErrAckAhead", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	// Numbers go on after a restart, with no gap and no reuse.
	j = open(t, dir)
	appendEvents(t, j, 1)
	evs, _ = j.Outbox(0, 0)
	if got := seqs(evs); !slices.Equal(got, []uint64{4, 5, 6}) {
		t.Fatalf("outbox after reopen = %v, want 4 5 6", got)
	}
	last, acked, err := j.OutboxState()
	if err != nil || last != 6 || acked != 3 {
		t.Fatalf("OutboxState = %d, %d, %v; want 6, 3", last, acked, err)
	}
}

func TestUpdateFailureKeepsNothing(t *testing.T) {
	j := open(t, t.TempDir())
	boom := errors.New("boom")
	err := j.Update(func(tx *Tx) error {
		if _, err := tx.Enqueue([]byte("d1")); err != nil {
			return err
		}
		if err := tx.PutCommand("m1", []byte("seen")); err != nil {
			return err
		}
		if _, err := tx.AppendEvent(func(uint64) ([]byte, error) { return []byte("x"), nil }); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	_ = j.View(func(tx *Tx) error {
		q, _ := tx.Queue()
		if len(q) != 0 || tx.Command("m1") != nil {
			t.Errorf("a failed transaction left queue %v, command %q", q, tx.Command("m1"))
		}
		return nil
	})
	if last, _, _ := j.OutboxState(); last != 0 {
		t.Errorf("a failed transaction used seq %d", last)
	}
}

func TestQueueOrderAndCommands(t *testing.T) {
	j := open(t, t.TempDir())
	var pos []uint64
	for _, d := range []string{"a", "b", "c"} {
		_ = j.Update(func(tx *Tx) error {
			p, err := tx.Enqueue([]byte(d))
			pos = append(pos, p)
			return err
		})
	}
	err := j.Update(func(tx *Tx) error {
		if err := tx.SetQueued(pos[1], []byte("b-running")); err != nil {
			return err
		}
		if err := tx.SetQueued(99, []byte("x")); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetQueued(99) = %v, want ErrNotFound", err)
		}
		return tx.Dequeue(pos[0])
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = j.View(func(tx *Tx) error {
		q, err := tx.Queue()
		if err != nil || len(q) != 2 || string(q[0].Data) != "b-running" || string(q[1].Data) != "c" {
			t.Errorf("queue = %v, %v; want b-running, c", q, err)
		}
		return nil
	})

	// Commands: updated in place, the oldest dropped past the cap.
	err = j.Update(func(tx *Tx) error {
		for i := range MaxCommands + 2 {
			if err := tx.PutCommand(fmt.Sprintf("m%05d", i), []byte("v1")); err != nil {
				return err
			}
		}
		return tx.PutCommand("m00003", []byte("v2"))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = j.View(func(tx *Tx) error {
		if tx.Command("m00000") != nil || tx.Command("m00001") != nil {
			t.Error("the two oldest commands were kept past MaxCommands")
		}
		if got := string(tx.Command("m00003")); got != "v2" {
			t.Errorf("m00003 = %q, want v2", got)
		}
		if got := string(tx.Command(fmt.Sprintf("m%05d", MaxCommands+1))); got != "v1" {
			t.Errorf("newest command = %q, want v1", got)
		}
		return nil
	})
}

// BenchmarkOutboxAppendAck is the cost of one reported event on the
// device: an fsynced append, then an fsynced cumulative ack.
//
//	go test -run '^$' -bench Outbox -benchmem ./journal/
func BenchmarkOutboxAppendAck(b *testing.B) {
	j, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	payload := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		var seq uint64
		err := j.Update(func(tx *Tx) (err error) {
			seq, err = tx.AppendEvent(func(uint64) ([]byte, error) { return payload, nil })
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := j.Ack(seq); err != nil {
			b.Fatal(err)
		}
	}
}
