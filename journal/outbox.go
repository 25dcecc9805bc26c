package journal

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// The outbox, the handled commands and the dispatch queue are the daemon's
// durable messaging state. They are written in transactions (Update) so
// that what a message causes and the message's record commit together: a
// dispatch is recorded as handled in the same transaction that queues it,
// and a flow's last event is written in the same transaction that takes
// its dispatch off the queue.
//
// Outbox sequence numbers start at 1 and have no gaps, across restarts;
// an acknowledged event is deleted, and the highest acknowledged number is
// kept so that a late or repeated acknowledgement is harmless.

// MaxCommands bounds the handled-command records kept for deduplication;
// past it the oldest (by the order they were recorded) are dropped.
const MaxCommands = 4096

// OutboxEvent is an event in the outbox.
type OutboxEvent struct {
	Seq  uint64
	Data []byte
}

// Tx is a read or read-write transaction on the messaging state.
type Tx struct {
	tx *bolt.Tx
	j  *Journal
}

// Update runs fn in one read-write transaction, fsynced when it commits.
// If fn returns an error, nothing it wrote is kept.
func (j *Journal) Update(fn func(*Tx) error) error {
	if err := j.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, j: j}) }); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	return nil
}

// View runs fn in one read-only transaction. Byte slices it reads are
// valid only inside fn.
func (j *Journal) View(fn func(*Tx) error) error {
	if err := j.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, j: j}) }); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	return nil
}

func seqKey(n uint64) []byte { return fmt.Appendf(nil, "%020d", n) }

func parseSeqKey(k []byte) (uint64, error) {
	n, err := strconv.ParseUint(string(k), 10, 64)
	if err != nil || len(k) != 20 {
		return 0, fmt.Errorf("bad sequence key %q", k)
	}
	return n, nil
}

func (t *Tx) counter(key []byte) (uint64, error) {
	n, _, err := parseVersion(t.tx.Bucket(bucketMeta).Get(key))
	if err != nil {
		return 0, fmt.Errorf("meta/%s: %w", key, err)
	}
	return n, nil
}

func (t *Tx) setCounter(key []byte, n uint64) error {
	return t.tx.Bucket(bucketMeta).Put(key, []byte(strconv.FormatUint(n, 10)))
}

// AppendEvent gives the next sequence number to an event and stores it:
// encode receives the number and returns the event's bytes (which carry
// it). It returns the number given.
func (t *Tx) AppendEvent(encode func(seq uint64) ([]byte, error)) (uint64, error) {
	last, err := t.counter(keyOutboxSeq)
	if err != nil {
		return 0, err
	}
	seq := last + 1
	data, err := encode(seq)
	if err != nil {
		return 0, err
	}
	if err := t.tx.Bucket(bucketOutbox).Put(seqKey(seq), data); err != nil {
		return 0, fmt.Errorf("outbox: put %d: %w", seq, err)
	}
	if err := t.setCounter(keyOutboxSeq, seq); err != nil {
		return 0, err
	}
	return seq, nil
}

// Outbox returns up to max unacknowledged events with a sequence number
// above after, in order (max <= 0: all).
func (j *Journal) Outbox(after uint64, max int) ([]OutboxEvent, error) {
	var out []OutboxEvent
	err := j.View(func(t *Tx) error {
		c := t.tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			seq, err := parseSeqKey(k)
			if err != nil {
				return fmt.Errorf("outbox: %w", err)
			}
			out = append(out, OutboxEvent{Seq: seq, Data: bytes.Clone(v)})
			if max > 0 && len(out) == max {
				break
			}
		}
		return nil
	})
	return out, err
}

// OutboxStream returns the name of this journal's event stream, made (a
// random id, kept) the first time it is asked for. A new journal is a new
// stream: its sequence numbers start again at 1.
func (j *Journal) OutboxStream() (string, error) {
	var stream string
	err := j.Update(func(t *Tx) error {
		meta := t.tx.Bucket(bucketMeta)
		if v := meta.Get(keyOutboxStream); v != nil {
			stream = string(v)
			return nil
		}
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		stream = hex.EncodeToString(b[:])
		return meta.Put(keyOutboxStream, []byte(stream))
	})
	return stream, err
}

// OutboxState returns the last sequence number given and the highest
// acknowledged.
func (j *Journal) OutboxState() (last, acked uint64, err error) {
	err = j.View(func(t *Tx) error {
		if last, err = t.counter(keyOutboxSeq); err != nil {
			return err
		}
		acked, err = t.counter(keyOutboxAcked)
		return err
	})
	return last, acked, err
}

// ErrAckAhead is returned (wrapped) by Ack for a sequence number that was
// never given: the acknowledgement is for events this journal does not
// have (another device's, or a journal that was replaced).
var ErrAckAhead = errors.New("acknowledges events that were never sent")

// Ack deletes every event up to and including seq and records seq as
// acknowledged. An acknowledgement at or below the recorded one changes
// nothing. It returns the number of events deleted.
func (j *Journal) Ack(seq uint64) (int, error) {
	n := 0
	err := j.Update(func(t *Tx) error {
		last, err := t.counter(keyOutboxSeq)
		if err != nil {
			return err
		}
		if seq > last {
			return fmt.Errorf("ack %d: %w (the last is %d)", seq, ErrAckAhead, last)
		}
		acked, err := t.counter(keyOutboxAcked)
		if err != nil || seq <= acked {
			return err
		}
		b := t.tx.Bucket(bucketOutbox)
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			n2, err := parseSeqKey(k)
			if err != nil {
				return fmt.Errorf("outbox: %w", err)
			}
			if n2 > seq {
				break
			}
			if err := c.Delete(); err != nil {
				return err
			}
			n++
		}
		return t.setCounter(keyOutboxAcked, seq)
	})
	return n, err
}

// Command returns the record of the handled command id, or nil. The
// slice is valid only inside the transaction.
func (t *Tx) Command(id string) []byte {
	v := t.tx.Bucket(bucketCommands).Get([]byte(id))
	if len(v) < 20 {
		return nil
	}
	return v[20:]
}

// PutCommand records command id as handled, or updates its record. Past
// MaxCommands records, the one recorded first is dropped.
func (t *Tx) PutCommand(id string, rec []byte) error {
	if id == "" {
		return errors.New("commands: empty id")
	}
	b := t.tx.Bucket(bucketCommands)
	// Each record is prefixed with the order it was first recorded in, so
	// that the oldest can be found without decoding the caller's bytes.
	old := b.Get([]byte(id))
	var order uint64
	if len(old) >= 20 {
		n, err := parseSeqKey(old[:20])
		if err != nil {
			return fmt.Errorf("commands: %s: %w", id, err)
		}
		order = n
	} else {
		n, err := t.counter(keyCommandsSeq)
		if err != nil {
			return err
		}
		order = n + 1
		if err := t.setCounter(keyCommandsSeq, order); err != nil {
			return err
		}
	}
	if err := b.Put([]byte(id), append(seqKey(order), rec...)); err != nil {
		return fmt.Errorf("commands: put %s: %w", id, err)
	}
	if old != nil {
		return nil
	}
	count, err := t.counter(keyCommandsN)
	if err != nil {
		return err
	}
	if count++; count > MaxCommands {
		if err := dropOldestCommand(b); err != nil {
			return err
		}
		count--
	}
	return t.setCounter(keyCommandsN, count)
}

func dropOldestCommand(b *bolt.Bucket) error {
	var oldest []byte
	var least uint64
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(v) < 20 {
			continue
		}
		if n, err := parseSeqKey(v[:20]); err == nil && (oldest == nil || n < least) {
			oldest, least = bytes.Clone(k), n
		}
	}
	if oldest == nil {
		return nil
	}
	return b.Delete(oldest)
}

// QueueEntry is a dispatch in the queue: Pos orders the queue.
type QueueEntry struct {
	Pos  uint64
	Data []byte
}

// Enqueue adds rec at the end of the queue and returns its position.
func (t *Tx) Enqueue(rec []byte) (uint64, error) {
	n, err := t.counter(keyQueueSeq)
	if err != nil {
		return 0, err
	}
	n++
	if err := t.tx.Bucket(bucketQueue).Put(seqKey(n), rec); err != nil {
		return 0, fmt.Errorf("queue: put %d: %w", n, err)
	}
	return n, t.setCounter(keyQueueSeq, n)
}

// SetQueued replaces the record at position pos, which must be queued.
func (t *Tx) SetQueued(pos uint64, rec []byte) error {
	b := t.tx.Bucket(bucketQueue)
	if b.Get(seqKey(pos)) == nil {
		return fmt.Errorf("queue: position %d: %w", pos, ErrNotFound)
	}
	return b.Put(seqKey(pos), rec)
}

// Dequeue removes the entry at position pos (none there: no change).
func (t *Tx) Dequeue(pos uint64) error {
	return t.tx.Bucket(bucketQueue).Delete(seqKey(pos))
}

// Queue returns the queue in order. The slices are copies.
func (t *Tx) Queue() ([]QueueEntry, error) {
	var out []QueueEntry
	c := t.tx.Bucket(bucketQueue).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		n, err := parseSeqKey(k)
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		out = append(out, QueueEntry{Pos: n, Data: bytes.Clone(v)})
	}
	return out, nil
}
