package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgeflow/edgeflow/controller/api"
)

// SchemaVersion is the version of the bbolt layout this package reads and
// writes.
const SchemaVersion = 1

// FileName is the bbolt file inside the data dir.
const FileName = "controller.db"

// DefaultOpenTimeout is how long Open waits for another process to release
// the file when Options.OpenTimeout is zero.
const DefaultOpenTimeout = time.Second

// The bbolt layout. Bucket and key names are part of the on-disk format:
// never rename them. Values are JSON unless said otherwise; seqs are
// 8-byte big-endian keys so that they sort.
//
//	bucket        key                               value
//	meta          schema                            schema version, decimal ("1")
//	devices       <device>                          api.Device
//	seqs          <device>                          DeviceSeq: the event stream and its last processed seq
//	bundles       <sha256>                          Bundle
//	deployments   <id>                              Deployment
//	runs          <deployment> / <device>           Run (a bucket per deployment)
//	events        <deployment> / <device> / <seq>   Event (a bucket per deployment and device)
//	feed          <deployment> / <seq>              api.Event (a bucket per deployment)
//	commands      <device> NUL <deployment> NUL <type>   Command
//	strategysets  <name>                            api.StrategySet
//
// Open creates a missing data bucket in a file of the same schema version
// (strategysets came after version 1 was first written): adding a bucket
// is not a schema change, an older controller ignores it.
var (
	bucketMeta        = []byte("meta")
	bucketDevices     = []byte("devices")
	bucketSeqs        = []byte("seqs")
	bucketBundles     = []byte("bundles")
	bucketDeployments = []byte("deployments")
	bucketRuns        = []byte("runs")
	bucketEvents      = []byte("events")
	bucketFeed        = []byte("feed")
	bucketCommands    = []byte("commands")
	bucketStrategySet = []byte("strategysets")

	keySchema = []byte("schema")

	dataBuckets = [][]byte{bucketDevices, bucketSeqs, bucketBundles, bucketDeployments, bucketRuns, bucketEvents, bucketFeed, bucketCommands, bucketStrategySet}
)

var (
	// ErrInUse is returned (wrapped) by Open when another process holds
	// the data dir's store open.
	ErrInUse = errors.New("data dir in use")
	// ErrNewerSchema is returned (wrapped) by Open for a file written by a
	// newer controller.
	ErrNewerSchema = errors.New("written by a newer edgeflow controller")
	// ErrUnknownSchema is returned (wrapped) by Open for a schema version
	// this controller has no migration for, or a file that is not a
	// controller store.
	ErrUnknownSchema = errors.New("unknown controller store schema")
)

// Options configure Open.
type Options struct {
	// OpenTimeout is how long Open waits for another process holding the
	// file; zero means DefaultOpenTimeout.
	OpenTimeout time.Duration
	// Logger receives the store's few log lines; nil discards them.
	Logger *slog.Logger
}

// Bolt is the bbolt implementation of Store: one file, DATA/controller.db,
// fsynced on every commit.
type Bolt struct {
	db   *bolt.DB
	path string
	log  *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*Bolt)(nil)

// Open opens (creating if needed) the store in the data dir dir, which is
// created with mode 0700 if missing. It waits up to opts.OpenTimeout for
// another process to release the file and then fails with ErrInUse ("another
// controller holds DIR"). It refuses, without changing it, a file of
// another schema version and a bbolt file that is not a controller store.
func Open(dir string, opts Options) (*Bolt, error) {
	if dir == "" {
		return nil, errors.New("open store: no data dir given")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.OpenTimeout
	if timeout <= 0 {
		timeout = DefaultOpenTimeout
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: create data dir: %w", err)
	}
	path := filepath.Join(dir, FileName)
	// NoSync stays false: every commit is fsynced.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("another controller holds %s (%s stays locked while it runs): %w", dir, path, ErrInUse)
	case err != nil:
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Bolt{db: db, path: path, log: log}
	if err := s.prepare(); err != nil {
		_ = db.Close()
		return nil, err
	}
	log.Debug("store open", "path", path)
	return s, nil
}

// prepare checks the schema version of an existing file, or writes the
// layout into a new one. A refused file is left as it was.
func (s *Bolt) prepare() error {
	var (
		version int
		empty   bool
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			var names []string
			_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				names = append(names, strconv.Quote(string(name)))
				return nil
			})
			if len(names) > 0 {
				return fmt.Errorf("open store %s: %w: no %q bucket but %s; point --data at the controller's own directory", s.path, ErrUnknownSchema, bucketMeta, strings.Join(names, ", "))
			}
			empty = true
			return nil
		}
		raw := meta.Get(keySchema)
		v, err := strconv.Atoi(string(raw))
		if raw == nil || err != nil || v < 1 {
			return fmt.Errorf("open store %s: %w: meta/schema is %q, want a version number", s.path, ErrUnknownSchema, raw)
		}
		version = v
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case version > SchemaVersion:
		return fmt.Errorf("open store %s: schema version %d: %w (this controller reads version %d); run a newer edgeflow", s.path, version, ErrNewerSchema, SchemaVersion)
	case !empty && version != SchemaVersion:
		// No migrations yet: version 1 is the first.
		return fmt.Errorf("open store %s: schema version %d: %w (this controller reads version %d and has no migration from it)", s.path, version, ErrUnknownSchema, SchemaVersion)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if empty {
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
				return err
			}
		}
		for _, b := range dataBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("open store %s: initialize: %w", s.path, err)
	}
	if empty {
		s.log.Info("store created", "path", s.path, "schema", SchemaVersion)
	}
	return nil
}

// Path returns the file's path.
func (s *Bolt) Path() string { return s.path }

// Close closes the file; later calls return the first call's result.
func (s *Bolt) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.db.Close() })
	return s.closeErr
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func commandKey(k CommandKey) []byte {
	return []byte(k.Device + "\x00" + k.Deployment + "\x00" + string(k.Type))
}

// get decodes the JSON value of key in bucket b into v, or returns
// ErrNotFound.
func get(b *bolt.Bucket, key string, v any, what string) error {
	if b == nil {
		return fmt.Errorf("%s %q: %w", what, key, ErrNotFound)
	}
	raw := b.Get([]byte(key))
	if raw == nil {
		return fmt.Errorf("%s %q: %w", what, key, ErrNotFound)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s %q: decode: %w", what, key, err)
	}
	return nil
}

func put(b *bolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

// each decodes every value of b (nil: none) into a new T.
func each[T any](b *bolt.Bucket, what string, fn func(T)) error {
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			return nil // a nested bucket
		}
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return fmt.Errorf("%s %q: decode: %w", what, k, err)
		}
		fn(x)
		return nil
	})
}

func (s *Bolt) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// Device returns a device by id.
func (s *Bolt) Device(ctx context.Context, id string) (d api.Device, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return get(tx.Bucket(bucketDevices), id, &d, "device")
	})
	return d, err
}

// Devices returns every device, by id.
func (s *Bolt) Devices(ctx context.Context) (ds []api.Device, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return each(tx.Bucket(bucketDevices), "device", func(d api.Device) { ds = append(ds, d) })
	})
	return ds, err
}

// LastSeq returns how far device's events were processed.
func (s *Bolt) LastSeq(ctx context.Context, device string) (seq DeviceSeq, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		seq, err = lastSeq(tx, device)
		return err
	})
	return seq, err
}

func lastSeq(tx *bolt.Tx, device string) (DeviceSeq, error) {
	var seq DeviceSeq
	if err := get(tx.Bucket(bucketSeqs), device, &seq, "seq of device"); err != nil && !errors.Is(err, ErrNotFound) {
		return DeviceSeq{}, err
	}
	return seq, nil
}

// AddBundle stores b unless a bundle with its SHA256 is stored.
func (s *Bolt) AddBundle(ctx context.Context, b Bundle) (stored Bundle, created bool, err error) {
	if err := ctx.Err(); err != nil {
		return Bundle{}, false, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBundles)
		err := get(bk, b.SHA256, &stored, "bundle")
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		stored, created = b, true
		return put(bk, []byte(b.SHA256), b)
	})
	if err != nil {
		return Bundle{}, false, fmt.Errorf("add bundle %s: %w", b.SHA256, err)
	}
	return stored, created, nil
}

// Bundle returns a bundle by SHA256.
func (s *Bolt) Bundle(ctx context.Context, sha string) (b Bundle, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return get(tx.Bucket(bucketBundles), sha, &b, "bundle")
	})
	return b, err
}

// Bundles returns every bundle, newest first.
func (s *Bolt) Bundles(ctx context.Context) (bs []Bundle, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return each(tx.Bucket(bucketBundles), "bundle", func(b Bundle) { bs = append(bs, b) })
	})
	slices.SortStableFunc(bs, func(a, b Bundle) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(a.SHA256, b.SHA256)
	})
	return bs, err
}

// Deployment returns a deployment by id.
func (s *Bolt) Deployment(ctx context.Context, id string) (d Deployment, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return get(tx.Bucket(bucketDeployments), id, &d, "deployment")
	})
	return d, err
}

// Deployments returns every deployment, newest first.
func (s *Bolt) Deployments(ctx context.Context) (ds []Deployment, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return each(tx.Bucket(bucketDeployments), "deployment", func(d Deployment) { ds = append(ds, d) })
	})
	slices.SortStableFunc(ds, func(a, b Deployment) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return ds, err
}

// Run returns the run of deployment on device.
func (s *Bolt) Run(ctx context.Context, deployment, device string) (r Run, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		runs := tx.Bucket(bucketRuns).Bucket([]byte(deployment))
		return get(runs, device, &r, "run of deployment "+deployment+" on device")
	})
	return r, err
}

// Runs returns every run of deployment, by device id.
func (s *Bolt) Runs(ctx context.Context, deployment string) (rs []Run, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return each(tx.Bucket(bucketRuns).Bucket([]byte(deployment)), "run", func(r Run) { rs = append(rs, r) })
	})
	return rs, err
}

// RunsAfter returns up to limit runs of deployment after device id after.
func (s *Bolt) RunsAfter(ctx context.Context, deployment, after string, limit int) (rs []Run, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRuns).Bucket([]byte(deployment))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			if limit > 0 && len(rs) == limit {
				break
			}
			var r Run
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("run %q: decode: %w", k, err)
			}
			rs = append(rs, r)
		}
		return nil
	})
	return rs, err
}

// Events returns the agent events of deployment on device, by seq.
func (s *Bolt) Events(ctx context.Context, deployment, device string) (es []Event, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents).Bucket([]byte(deployment))
		if b == nil {
			return nil
		}
		return each(b.Bucket([]byte(device)), "event", func(e Event) { es = append(es, e) })
	})
	return es, err
}

// Feed returns up to limit feed events of deployment after seq after.
func (s *Bolt) Feed(ctx context.Context, deployment string, after uint64, limit int) (es []api.Event, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFeed).Bucket([]byte(deployment))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			if limit > 0 && len(es) == limit {
				break
			}
			var e api.Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("feed event %d of deployment %s: decode: %w", binary.BigEndian.Uint64(k), deployment, err)
			}
			es = append(es, e)
		}
		return nil
	})
	return es, err
}

// StrategySet returns a strategy set by name.
func (s *Bolt) StrategySet(ctx context.Context, name string) (set api.StrategySet, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return get(tx.Bucket(bucketStrategySet), name, &set, "strategy set")
	})
	return set, err
}

// StrategySets returns every strategy set, by name.
func (s *Bolt) StrategySets(ctx context.Context) (sets []api.StrategySet, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		return each(tx.Bucket(bucketStrategySet), "strategy set", func(x api.StrategySet) { sets = append(sets, x) })
	})
	return sets, err
}

// PutStrategySet stores set, keeping the Created of the one it replaces.
func (s *Bolt) PutStrategySet(ctx context.Context, set api.StrategySet) (stored api.StrategySet, created bool, err error) {
	if err := ctx.Err(); err != nil {
		return api.StrategySet{}, false, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStrategySet)
		var old api.StrategySet
		err := get(b, set.Name, &old, "strategy set")
		switch {
		case err == nil:
			set.Created = old.Created
		case errors.Is(err, ErrNotFound):
			created = true
		default:
			return err
		}
		stored = set
		return put(b, []byte(set.Name), set)
	})
	if err != nil {
		return api.StrategySet{}, false, fmt.Errorf("put strategy set %q: %w", set.Name, err)
	}
	return stored, created, nil
}

// DeleteStrategySet deletes a strategy set.
func (s *Bolt) DeleteStrategySet(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStrategySet)
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("strategy set %q: %w", name, ErrNotFound)
		}
		return b.Delete([]byte(name))
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete strategy set %q: %w", name, err)
	}
	return err
}

// Commands returns the pending commands of device ("" for every device).
func (s *Bolt) Commands(ctx context.Context, device string) (cs []Command, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCommands).Cursor()
		prefix := []byte(nil)
		if device != "" {
			prefix = []byte(device + "\x00")
		}
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var cmd Command
			if err := json.Unmarshal(v, &cmd); err != nil {
				return fmt.Errorf("command %q: decode: %w", k, err)
			}
			cs = append(cs, cmd)
		}
		return nil
	})
	return cs, err
}

// Commit writes b in one fsynced bbolt transaction.
func (s *Bolt) Commit(ctx context.Context, b Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.Empty() {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, u := range b.Seqs {
			cur, err := lastSeq(tx, u.Device)
			if err != nil {
				return err
			}
			if cur != u.From {
				return fmt.Errorf("seq of device %q is %+v, not %+v: %w", u.Device, cur, u.From, ErrConflict)
			}
			if err := put(tx.Bucket(bucketSeqs), []byte(u.Device), u.To); err != nil {
				return err
			}
		}
		for _, d := range b.Devices {
			if err := put(tx.Bucket(bucketDevices), []byte(d.ID), d); err != nil {
				return fmt.Errorf("device %q: %w", d.ID, err)
			}
		}
		for _, d := range b.Deployments {
			if err := put(tx.Bucket(bucketDeployments), []byte(d.ID), d); err != nil {
				return fmt.Errorf("deployment %s: %w", d.ID, err)
			}
		}
		for _, r := range b.Runs {
			runs, err := tx.Bucket(bucketRuns).CreateBucketIfNotExists([]byte(r.Deployment))
			if err != nil {
				return fmt.Errorf("runs of deployment %s: %w", r.Deployment, err)
			}
			if err := put(runs, []byte(r.Device), r); err != nil {
				return fmt.Errorf("run of deployment %s on device %q: %w", r.Deployment, r.Device, err)
			}
		}
		for _, e := range b.Events {
			dep, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(e.Deployment))
			if err != nil {
				return fmt.Errorf("events of deployment %s: %w", e.Deployment, err)
			}
			dev, err := dep.CreateBucketIfNotExists([]byte(e.Device))
			if err != nil {
				return fmt.Errorf("events of deployment %s on device %q: %w", e.Deployment, e.Device, err)
			}
			if err := put(dev, seqKey(e.Seq), e); err != nil {
				return fmt.Errorf("event %d of device %q: %w", e.Seq, e.Device, err)
			}
		}
		for _, f := range b.Feed {
			feed, err := tx.Bucket(bucketFeed).CreateBucketIfNotExists([]byte(f.Deployment))
			if err != nil {
				return fmt.Errorf("feed of deployment %s: %w", f.Deployment, err)
			}
			k := seqKey(f.Event.Seq)
			if feed.Get(k) != nil {
				return fmt.Errorf("feed event %d of deployment %s exists: %w", f.Event.Seq, f.Deployment, ErrConflict)
			}
			if err := put(feed, k, f.Event); err != nil {
				return fmt.Errorf("feed event %d of deployment %s: %w", f.Event.Seq, f.Deployment, err)
			}
		}
		cmds := tx.Bucket(bucketCommands)
		for _, k := range b.DeleteCommands {
			if err := cmds.Delete(commandKey(k)); err != nil {
				return err
			}
		}
		for _, c := range b.PutCommands {
			if err := put(cmds, commandKey(c.Key()), c); err != nil {
				return fmt.Errorf("command %s: %w", c.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit to %s: %w", s.path, err)
	}
	return nil
}
