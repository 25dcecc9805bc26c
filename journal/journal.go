// Package journal is the agent's durable state: a bbolt file in the state
// dir that records, before the agent changes anything on the device, what
// it is about to do and what it needs to undo it ("write before you act").
// After a crash, power loss or reboot the agent reads the journal back to
// resume or roll back the unfinished execution.
//
// The journal is a key-value store of opaque records. It knows nothing about
// the engine: callers marshal their own records (the engine writes JSON) and
// the journal stores the bytes as given. Every write is one bbolt update
// transaction, fsynced when it commits (the file is never opened with
// NoSync), so a write that returned survives a power loss.
//
// # Layout
//
// The file is stateDir/journal.db. Bucket and key names are strings:
//
//	bucket       key                      value
//	meta         schema                   schema version, decimal ("1")
//	meta         current                  id of the unfinished execution (absent: none)
//	executions   <id>                     execution record (opaque bytes)
//	logs         <id>/<step>/<attempt>    output of one attempt of a step (opaque bytes)
//	installed    <flow name>              release version of the last bundle of that flow
//	                                      that succeeded here, decimal ("12")
//	meta         outbox-seq               the last event sequence number given, decimal
//	meta         outbox-acked             the highest sequence number acknowledged, decimal
//	meta         outbox-stream            the name of the event stream (32 hex digits)
//	outbox       <seq, 20 digits>         an event not yet acknowledged (opaque bytes)
//	meta         commands-seq             the last command record order given, decimal
//	meta         commands-n               how many command records there are, decimal
//	commands     <message id>             <order, 20 digits> + a dispatch or command handled
//	                                      (opaque bytes); at most MaxCommands, oldest dropped
//	meta         queue-seq                the last queue position given, decimal
//	queue        <position, 20 digits>    a dispatch waiting or running (opaque bytes)
//
// Execution ids are made by the caller and sort by start time, so
// [Journal.Executions] lists them oldest first. Attempts are written
// zero-padded to eight digits ("00000002") so that a step's logs sort by
// attempt. Ids and step names must not contain "/".
//
// # Schema version
//
// A new (empty) file gets meta/schema = [SchemaVersion]. An existing file is
// read as it is when its version equals [SchemaVersion]; an older version is
// upgraded only by a migration written for it, and there is none yet, so any
// other version is refused. A file written by a newer agent is refused with
// an error that says so and how to proceed; a bbolt file without the meta
// bucket (another program's database) and a file that is not a bbolt
// database at all are refused too. A refused file is never modified, wiped
// or replaced: the operator decides what to do with it.
//
// # Locking
//
// bbolt holds an exclusive flock on the file while it is open, so one agent
// owns a state dir at a time. Open waits up to [Options.OpenTimeout] for the
// lock and then fails with an [*InUseError] naming the process recorded in
// stateDir/agent.pid. The owner writes that file after it gets the lock and
// removes it in [Journal.Close].
package journal

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the version of the layout this package reads and writes.
const SchemaVersion = 1

// File names inside the state dir.
const (
	FileName    = "journal.db"
	PIDFileName = "agent.pid"
)

// DefaultOpenTimeout is how long Open waits for another process to release
// the journal when Options.OpenTimeout is zero.
const DefaultOpenTimeout = time.Second

// Bucket and key names. They are part of the on-disk format: never rename.
var (
	bucketMeta       = []byte("meta")
	bucketExecutions = []byte("executions")
	bucketLogs       = []byte("logs")
	bucketInstalled  = []byte("installed")
	bucketOutbox     = []byte("outbox")
	bucketCommands   = []byte("commands")
	bucketQueue      = []byte("queue")

	keySchema       = []byte("schema")
	keyCurrent      = []byte("current")
	keyOutboxSeq    = []byte("outbox-seq")
	keyOutboxAcked  = []byte("outbox-acked")
	keyOutboxStream = []byte("outbox-stream")
	keyQueueSeq     = []byte("queue-seq")
	keyCommandsSeq  = []byte("commands-seq")
	keyCommandsN    = []byte("commands-n")
)

// migrations upgrade a file from the version of the key to the next one,
// inside the open transaction. There are none yet: version 1 is the first.
// Open refuses a version for which no chain of migrations leads to
// SchemaVersion.
var migrations = map[int]func(tx *bolt.Tx) error{}

var (
	// ErrNotFound is returned (wrapped) when an execution or log is not in
	// the journal.
	ErrNotFound = errors.New("not found")

	// ErrNewerSchema is returned (wrapped) by Open for a file written by a
	// newer edgeflow-agent.
	ErrNewerSchema = errors.New("written by a newer edgeflow-agent")

	// ErrUnknownSchema is returned (wrapped) by Open for a schema version
	// that this agent has no migration for.
	ErrUnknownSchema = errors.New("unknown journal schema version")

	// ErrNotJournal is returned (wrapped) by Open for a bbolt database that
	// is not an edgeflow journal.
	ErrNotJournal = errors.New("not an edgeflow journal")

	// ErrCorrupt is returned (wrapped, together with bbolt's error) by Open
	// for a file that bbolt cannot read as a database.
	ErrCorrupt = errors.New("not a readable bbolt database (corrupt, truncated or another kind of file)")
)

// Options configures Open.
type Options struct {
	// OpenTimeout is how long Open waits for another process holding the
	// journal; zero means DefaultOpenTimeout. A negative value is treated
	// as zero.
	OpenTimeout time.Duration
	// Logger receives the journal's few log lines; nil discards them.
	Logger *slog.Logger
}

// InUseError is returned by Open when another process holds the journal
// open. PID is read from the state dir's agent.pid file; it is 0 when that
// file is missing, unreadable or names a process that no longer runs.
type InUseError struct {
	Dir string
	PID int
}

func (e *InUseError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("state dir %s in use by pid %d", e.Dir, e.PID)
	}
	return fmt.Sprintf("state dir %s in use by another process", e.Dir)
}

// Journal is an open journal. Its methods are safe for concurrent use.
type Journal struct {
	db      *bolt.DB
	dir     string
	path    string
	pidPath string
	pid     int
	log     *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the journal in stateDir, which is created
// with mode 0700 if it does not exist. It waits up to opts.OpenTimeout for
// another process to release the file and then returns an *InUseError. It
// refuses, without changing them, files of another schema version, bbolt
// files that are not journals, and files that are not bbolt databases.
func Open(stateDir string, opts Options) (*Journal, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.OpenTimeout
	if timeout <= 0 {
		timeout = DefaultOpenTimeout
	}
	if stateDir == "" {
		return nil, errors.New("open journal: no state dir given")
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("open journal: create state dir: %w", err)
	}
	path := filepath.Join(stateDir, FileName)
	pidPath := filepath.Join(stateDir, PIDFileName)

	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, &InUseError{Dir: stateDir, PID: readPID(pidPath)}
	case isCorrupt(err):
		return nil, fmt.Errorf("open journal %s: %w: %w; restore it from a backup, or move it aside and the agent starts a new, empty journal (an update it was running can then not be resumed or rolled back)", path, ErrCorrupt, err)
	case err != nil:
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}

	j := &Journal{db: db, dir: stateDir, path: path, pidPath: pidPath, pid: os.Getpid(), log: log}
	if err := j.prepare(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := writePID(pidPath, j.pid); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open journal %s: write %s: %w", path, pidPath, err)
	}
	log.Debug("journal open", "path", path)
	return j, nil
}

// isCorrupt reports whether err from bolt.Open means the file's content is
// not a usable bbolt database.
func isCorrupt(err error) bool {
	for _, e := range []error{berrors.ErrInvalid, berrors.ErrVersionMismatch, berrors.ErrChecksum, berrors.ErrInvalidMapping} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// prepare checks the schema version of an existing file, or writes the
// layout into a new one. It reads first and writes only when the file is
// new or needs a migration, so a refused file is left as it was.
func (j *Journal) prepare() (err error) {
	defer func() {
		// bbolt panics on some kinds of damaged pages; that is a corrupt
		// file, not a reason to crash the agent.
		if r := recover(); r != nil {
			err = fmt.Errorf("open journal %s: %w: %v; restore it from a backup, or move it aside and the agent starts a new, empty journal (an update it was running can then not be resumed or rolled back)", j.path, ErrCorrupt, r)
		}
	}()

	var (
		version int
		empty   bool
	)
	err = j.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			var names []string
			_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				names = append(names, strconv.Quote(string(name)))
				return nil
			})
			if len(names) > 0 {
				return fmt.Errorf("open journal %s: %w: it has no %q bucket but holds %s; point the agent at its own state dir, or move the file aside", j.path, ErrNotJournal, bucketMeta, strings.Join(names, ", "))
			}
			empty = true
			return nil
		}
		raw := meta.Get(keySchema)
		v, perr := strconv.Atoi(string(raw))
		if raw == nil || perr != nil || v < 1 {
			return fmt.Errorf("open journal %s: %w: meta/schema is %q, want a version number; point the agent at its own state dir, or move the file aside", j.path, ErrNotJournal, raw)
		}
		version = v
		return nil
	})
	if err != nil {
		return err
	}

	switch {
	case empty:
		err = j.db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
				return err
			}
			return createBuckets(tx)
		})
		if err != nil {
			return fmt.Errorf("open journal %s: initialize: %w", j.path, err)
		}
		j.log.Info("journal created", "path", j.path, "schema", SchemaVersion)
		return nil
	case version == SchemaVersion:
		return j.ensureBuckets()
	case version > SchemaVersion:
		return fmt.Errorf("open journal %s: schema version %d: %w (this agent reads version %d); upgrade edgeflow-agent, or move the file aside to start with an empty journal", j.path, version, ErrNewerSchema, SchemaVersion)
	}

	// An older version: every step up to SchemaVersion needs a migration,
	// checked before anything is written.
	for v := version; v < SchemaVersion; v++ {
		if migrations[v] == nil {
			return fmt.Errorf("open journal %s: schema version %d: %w (this agent reads version %d and has no migration from it); move the file aside to start with an empty journal", j.path, version, ErrUnknownSchema, SchemaVersion)
		}
	}
	err = j.db.Update(func(tx *bolt.Tx) error {
		for v := version; v < SchemaVersion; v++ {
			if err := migrations[v](tx); err != nil {
				return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
			return err
		}
		return createBuckets(tx)
	})
	if err != nil {
		return fmt.Errorf("open journal %s: %w", j.path, err)
	}
	j.log.Info("journal migrated", "path", j.path, "from", version, "to", SchemaVersion)
	return nil
}

// ensureBuckets creates the data buckets of a current-version file if one
// is missing, writing only when needed.
func (j *Journal) ensureBuckets() error {
	missing := false
	_ = j.db.View(func(tx *bolt.Tx) error {
		for _, b := range dataBuckets {
			missing = missing || tx.Bucket(b) == nil
		}
		return nil
	})
	if !missing {
		return nil
	}
	if err := j.db.Update(createBuckets); err != nil {
		return fmt.Errorf("open journal %s: %w", j.path, err)
	}
	return nil
}

// dataBuckets are the buckets beside meta. A bucket added within schema
// version 1 is created when a file that lacks it is opened; older agents
// ignore it.
var dataBuckets = [][]byte{bucketExecutions, bucketLogs, bucketInstalled, bucketOutbox, bucketCommands, bucketQueue}

func createBuckets(tx *bolt.Tx) error {
	for _, b := range dataBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Close removes the pid file (if it still holds this process's pid) and
// closes the database. The pid file goes first, while the lock is still
// held, so it can never remove the pid file of the next owner. Calling
// Close again returns the first call's result.
func (j *Journal) Close() error {
	j.closeOnce.Do(func() {
		var errs []error
		if readPIDFile(j.pidPath) == j.pid {
			if err := os.Remove(j.pidPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove %s: %w", j.pidPath, err))
			}
		}
		if err := j.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close journal %s: %w", j.path, err))
		}
		j.closeErr = errors.Join(errs...)
	})
	return j.closeErr
}

// Path returns the journal file's path.
func (j *Journal) Path() string { return j.path }

// Dir returns the state dir the journal lives in.
func (j *Journal) Dir() string { return j.dir }

// checkName refuses ids and step names that would make log keys ambiguous.
func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if strings.Contains(s, "/") {
		return fmt.Errorf("%s %q contains '/'", what, s)
	}
	return nil
}

// PutExecution stores the record of execution id, replacing any earlier
// one, in one transaction that is fsynced before it returns. The current
// pointer is not touched.
func (j *Journal) PutExecution(id string, rec []byte) error {
	if err := checkName("execution id", id); err != nil {
		return fmt.Errorf("journal: put execution: %w", err)
	}
	err := j.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketExecutions).Put([]byte(id), rec)
	})
	if err != nil {
		return fmt.Errorf("journal %s: put execution %s: %w", j.path, id, err)
	}
	return nil
}

// PutExecutionCurrent stores the record of execution id and updates the
// current pointer in the same transaction, fsynced before it returns. With
// current true, id becomes the current (unfinished) execution. With current
// false, the pointer is cleared if it names id, and left alone if it names
// another execution (or none).
func (j *Journal) PutExecutionCurrent(id string, rec []byte, current bool) error {
	if err := checkName("execution id", id); err != nil {
		return fmt.Errorf("journal: put execution: %w", err)
	}
	err := j.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketExecutions).Put([]byte(id), rec); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if current {
			return meta.Put(keyCurrent, []byte(id))
		}
		if string(meta.Get(keyCurrent)) == id {
			return meta.Delete(keyCurrent)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("journal %s: put execution %s: %w", j.path, id, err)
	}
	return nil
}

// SaveExecutionInstalled stores the finished record of execution id (the
// current pointer is cleared if it names id) and, in the same fsynced
// transaction, records version as the installed release of flow, unless a
// higher one is recorded already. A crash can therefore never leave a
// succeeded bundle without its version on record, which is what refuses
// a replay of an older bundle.
func (j *Journal) SaveExecutionInstalled(id string, rec []byte, flow string, version uint64) error {
	if err := checkName("execution id", id); err != nil {
		return fmt.Errorf("journal: put execution: %w", err)
	}
	if flow == "" {
		return fmt.Errorf("journal: installed version: empty flow name")
	}
	err := j.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketExecutions).Put([]byte(id), rec); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if string(meta.Get(keyCurrent)) == id {
			if err := meta.Delete(keyCurrent); err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketInstalled)
		if old, ok, err := parseVersion(b.Get([]byte(flow))); err != nil {
			return fmt.Errorf("installed version of %q: %w", flow, err)
		} else if ok && old >= version {
			return nil
		}
		return b.Put([]byte(flow), []byte(strconv.FormatUint(version, 10)))
	})
	if err != nil {
		return fmt.Errorf("journal %s: put execution %s: %w", j.path, id, err)
	}
	return nil
}

// Installed returns the release version of the last bundle of flow that
// succeeded on this device; ok is false when none has.
func (j *Journal) Installed(flow string) (version uint64, ok bool, err error) {
	err = j.db.View(func(tx *bolt.Tx) error {
		version, ok, err = parseVersion(tx.Bucket(bucketInstalled).Get([]byte(flow)))
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("journal %s: installed version of %q: %w", j.path, flow, err)
	}
	return version, ok, nil
}

// PutExecutionFinished stores the finished record of execution id inside
// tx, and clears the current pointer if it names id: with what else tx
// writes (an event, the installed release), it commits in one fsynced
// transaction.
func (t *Tx) PutExecutionFinished(id string, rec []byte) error {
	if err := checkName("execution id", id); err != nil {
		return fmt.Errorf("put execution: %w", err)
	}
	if err := t.tx.Bucket(bucketExecutions).Put([]byte(id), rec); err != nil {
		return err
	}
	meta := t.tx.Bucket(bucketMeta)
	if string(meta.Get(keyCurrent)) == id {
		return meta.Delete(keyCurrent)
	}
	return nil
}

// Installed returns the installed release version of flow, inside tx.
func (t *Tx) Installed(flow string) (uint64, bool, error) {
	v, ok, err := parseVersion(t.tx.Bucket(bucketInstalled).Get([]byte(flow)))
	if err != nil {
		return 0, false, fmt.Errorf("installed version of %q: %w", flow, err)
	}
	return v, ok, nil
}

// SetInstalled records version as the installed release of flow, inside
// tx; with ok false it records that none is installed. Unlike
// SaveExecutionInstalled it may lower the version: it puts back what an
// undone execution replaced.
func (t *Tx) SetInstalled(flow string, version uint64, ok bool) error {
	if flow == "" {
		return errors.New("installed version: empty flow name")
	}
	b := t.tx.Bucket(bucketInstalled)
	if !ok {
		return b.Delete([]byte(flow))
	}
	return b.Put([]byte(flow), []byte(strconv.FormatUint(version, 10)))
}

func parseVersion(v []byte) (uint64, bool, error) {
	if v == nil {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("not a version: %q", v)
	}
	return n, true, nil
}

// SaveExecution is PutExecutionCurrent under the name the engine's Store
// interface uses: unfinished marks id as the execution to resume, and a
// finished one clears the pointer if it named id.
func (j *Journal) SaveExecution(id string, rec []byte, unfinished bool) error {
	return j.PutExecutionCurrent(id, rec, unfinished)
}

// Execution returns a copy of the record of execution id, or an error
// wrapping ErrNotFound.
func (j *Journal) Execution(id string) ([]byte, error) {
	var rec []byte
	err := j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketExecutions).Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		rec = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("journal %s: execution %q: %w", j.path, id, err)
	}
	return rec, nil
}

// Executions returns the ids of all executions in key order, which is the
// order they started in.
func (j *Journal) Executions() ([]string, error) {
	var ids []string
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketExecutions).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("journal %s: list executions: %w", j.path, err)
	}
	return ids, nil
}

// SetCurrent records id as the unfinished execution, in one transaction
// fsynced before it returns; "" clears the pointer. The execution must
// already be stored (an error wrapping ErrNotFound otherwise). To store a
// record and move the pointer atomically use PutExecutionCurrent.
func (j *Journal) SetCurrent(id string) error {
	err := j.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if id == "" {
			return meta.Delete(keyCurrent)
		}
		if tx.Bucket(bucketExecutions).Get([]byte(id)) == nil {
			return fmt.Errorf("execution %q: %w", id, ErrNotFound)
		}
		return meta.Put(keyCurrent, []byte(id))
	})
	if err != nil {
		return fmt.Errorf("journal %s: set current: %w", j.path, err)
	}
	return nil
}

// Current returns the id of the unfinished execution, or "" if there is
// none.
func (j *Journal) Current() (string, error) {
	var id string
	err := j.db.View(func(tx *bolt.Tx) error {
		id = string(tx.Bucket(bucketMeta).Get(keyCurrent))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("journal %s: current: %w", j.path, err)
	}
	return id, nil
}

// logKey is the key of one attempt's log: id/step/attempt, the attempt
// zero-padded so that keys sort by attempt.
func logKey(id, step string, attempt int) ([]byte, error) {
	if err := checkName("execution id", id); err != nil {
		return nil, err
	}
	if err := checkName("step name", step); err != nil {
		return nil, err
	}
	if attempt < 0 {
		return nil, fmt.Errorf("negative attempt %d", attempt)
	}
	return fmt.Appendf(nil, "%s/%s/%08d", id, step, attempt), nil
}

// PutLog stores the output of one attempt of a step, replacing an earlier
// one, in one transaction fsynced before it returns.
func (j *Journal) PutLog(id, step string, attempt int, log []byte) error {
	key, err := logKey(id, step, attempt)
	if err != nil {
		return fmt.Errorf("journal: put log: %w", err)
	}
	err = j.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLogs).Put(key, log)
	})
	if err != nil {
		return fmt.Errorf("journal %s: put log %s: %w", j.path, key, err)
	}
	return nil
}

// SaveLog is PutLog under the name the engine's Store interface uses.
func (j *Journal) SaveLog(id, step string, attempt int, log []byte) error {
	return j.PutLog(id, step, attempt, log)
}

// Log returns a copy of the output of one attempt of a step, or an error
// wrapping ErrNotFound.
func (j *Journal) Log(id, step string, attempt int) ([]byte, error) {
	key, err := logKey(id, step, attempt)
	if err != nil {
		return nil, fmt.Errorf("journal: log: %w", err)
	}
	var out []byte
	err = j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketLogs).Get(key)
		if v == nil {
			return ErrNotFound
		}
		out = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("journal %s: log %s: %w", j.path, key, err)
	}
	return out, nil
}

// DeleteExecution removes the record of execution id and all its logs in
// one transaction. Deleting an execution that is not stored does nothing.
// The current (unfinished) execution is refused: it holds what the agent
// needs to resume or undo; clear the pointer first if it really must go.
func (j *Journal) DeleteExecution(id string) error {
	if err := checkName("execution id", id); err != nil {
		return fmt.Errorf("journal: delete execution: %w", err)
	}
	err := j.db.Update(func(tx *bolt.Tx) error {
		if string(tx.Bucket(bucketMeta).Get(keyCurrent)) == id {
			return errors.New("it is the current (unfinished) execution")
		}
		if err := tx.Bucket(bucketExecutions).Delete([]byte(id)); err != nil {
			return err
		}
		logs := tx.Bucket(bucketLogs)
		prefix := []byte(id + "/")
		var keys [][]byte
		c := logs.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := logs.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("journal %s: delete execution %s: %w", j.path, id, err)
	}
	return nil
}

// writePID writes pid to path atomically: a temporary file in the same
// directory, fsynced, then renamed over path.
func writePID(path string, pid int) error {
	f, err := os.CreateTemp(filepath.Dir(path), PIDFileName+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// readPIDFile returns the pid in the pid file at path, or 0.
func readPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// readPID returns the pid in the pid file at path if that process still
// runs, else 0 (a stale file left by a killed agent names nobody).
func readPID(path string) int {
	pid := readPIDFile(path)
	if pid == 0 {
		return 0
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return 0
	}
	return pid
}
