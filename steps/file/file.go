package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// Runner runs file steps and undoes them (revertFiles).
type Runner struct {
	// AllowPaths are the absolute directories file steps may write below.
	// Empty allows every path. See the package doc for how symbolic links
	// are checked.
	AllowPaths []string
}

var (
	_ steps.Runner = (*Runner)(nil)
	_ steps.Undoer = (*Runner)(nil)
)

// DirMode is the mode of the directories a file step creates.
const DirMode = 0o755

// DefaultMode is the mode of a new file whose entry gives none.
const DefaultMode = 0o644

// target is one entry of a file step, checked and resolved.
type target struct {
	op   string // "dest /etc/x (src files/x)", the start of its errors
	dest string // the entry's dest, cleaned
	path string // the real path written

	mode    uint32
	modeSet bool
	owner   owner
	src     string // the resolved src, "" for inline content
	sum     []byte // the expected SHA-256, nil when not given

	// Filled in by Run, not by Preflight.
	content  []byte // the expanded inline content
	uid, gid int    // from owner, -1 for a part not set
	existed  bool
	prev     previousState
	mkdirs   []string // directories to create, outermost first
}

// previousState is the dest's attributes when the step started.
type previousState struct {
	mode     uint32
	uid, gid int
}

// where names an entry in errors: its dest and, if it has one, its src.
func where(e *flow.FileEntry) string {
	if e.Src != "" {
		return fmt.Sprintf("dest %s (src %s)", e.Dest, e.Src)
	}
	return "dest " + e.Dest
}

// Preflight checks a file step before the flow starts, changing nothing:
// every dest is absolute and allowed (symbolic links resolved as they are
// now), every src exists in root as a regular file, and every mode, owner
// and sha256 is well formed. Owner names are not looked up yet, since an
// earlier step may create the user. Every problem is reported, each naming
// its entry.
func (r *Runner) Preflight(s *flow.Step, root string) error {
	if s.File == nil {
		return onfailure.Errorf(onfailure.Unknown, "step %q is not a file step", s.Name)
	}
	roots, err := r.allowedRoots()
	if err != nil {
		return err
	}
	var probs problems
	for i := range s.File.Entries {
		if _, err := check(&s.File.Entries[i], root, roots); err != nil {
			probs = append(probs, err...)
		}
	}
	return probs.err()
}

// check does the checks of Preflight for one entry and returns what they
// resolved.
func check(e *flow.FileEntry, root string, roots []allowedRoot) (*target, problems) {
	t := &target{op: where(e), uid: -1, gid: -1}
	var probs problems
	fail := func(err error) { probs = append(probs, onfailure.Wrap(t.op, err)) }

	var err error
	if t.dest, t.path, err = resolveDest(e.Dest, roots); err != nil {
		fail(err)
	}
	if e.Mode != "" {
		if t.mode, err = parseMode(e.Mode); err != nil {
			fail(err)
		}
		t.modeSet = true
	}
	if t.owner, err = parseOwner(e.Owner); err != nil {
		fail(err)
	}
	if e.SHA256 != "" {
		if t.sum, err = hex.DecodeString(e.SHA256); err != nil || len(t.sum) != sha256.Size {
			fail(fmt.Errorf("sha256 %q is not a hex SHA-256 digest", e.SHA256))
		}
	}
	switch {
	case e.Content != nil && e.Src != "":
		fail(errors.New("both src and content are set"))
	case e.Content == nil && e.Src == "":
		fail(errors.New("neither src nor content is set"))
	case e.Src != "":
		if t.src, err = resolveSrc(root, e.Src); err != nil {
			fail(err)
		}
	}
	return t, probs
}

// resolveSrc returns src resolved inside root with InRoot.
func resolveSrc(root, src string) (string, error) {
	p, err := InRoot(root, src)
	if err != nil {
		return "", fmt.Errorf("src %w", err)
	}
	return p, nil
}

// InRoot returns rel resolved inside root, the flow's directory or bundle
// root, which it never leaves ("..", absolute paths and symbolic links
// stop at root: "../../etc/passwd" is root/etc/passwd), and checks that it
// is a regular file. Every step type that reads a file of the flow (a
// file's src, a compose file, an image archive) resolves it so.
func InRoot(root, rel string) (string, error) {
	if root == "" {
		return "", errors.New("cannot be read: no flow directory")
	}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	p, err := securejoin.SecureJoin(absRoot, rel)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("not found in %s: %w", absRoot, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file (%s)", p, fi.Mode().Type())
	}
	return p, nil
}

// Run installs the step's entries in order, as the package doc says: it
// checks every entry and every sha256 first, journals the undo data with
// env.SaveUndo, and only then writes.
func (r *Runner) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	if s.File == nil {
		return onfailure.Errorf(onfailure.Unknown, "step %q is not a file step", s.Name)
	}
	if env == nil || env.SaveUndo == nil {
		return onfailure.Errorf(onfailure.Unknown, "file step %q: no way to journal undo data", s.Name)
	}
	roots, err := r.allowedRoots()
	if err != nil {
		return err
	}
	targets := make([]*target, 0, len(s.File.Entries))
	for i := range s.File.Entries {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("file step stopped: %w", context.Cause(ctx))
		}
		t, err := plan(ctx, &s.File.Entries[i], env, roots)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	data, err := record(ctx, targets, env)
	if err != nil {
		return err
	}
	if err := env.SaveUndo(data); err != nil {
		return onfailure.Wrap("journal file step undo data", err)
	}
	for _, t := range targets {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("file step stopped before %s: %w", t.dest, context.Cause(ctx))
		}
		if err := t.install(ctx); err != nil {
			return err
		}
		logf(env, "installed %s", t.path)
	}
	return nil
}

// plan checks one entry for Run without changing anything: the checks of
// Preflight, then the owner lookup, the content and its digest, and the
// dest's current state.
func plan(ctx context.Context, e *flow.FileEntry, env *steps.Env, roots []allowedRoot) (*target, error) {
	t, probs := check(e, env.Root, roots)
	if err := probs.err(); err != nil {
		return nil, err
	}
	var err error
	if t.uid, t.gid, err = t.owner.lookup(); err != nil {
		return nil, onfailure.Wrap(t.op, err)
	}
	if e.Content != nil {
		c := *e.Content
		if env.Expand != nil {
			if c, err = env.Expand(c); err != nil {
				return nil, onfailure.Wrap(t.op+": content", err)
			}
		}
		t.content = []byte(c)
	}
	if t.sum != nil {
		// Check now, so that a wrong digest on any entry is refused before
		// anything changes; the copy checks again, in case src changed.
		got, err := t.digest(ctx)
		if err != nil {
			return nil, onfailure.Wrap(t.op, err)
		}
		if err := t.checkSum(got); err != nil {
			return nil, onfailure.Wrap(t.op, err)
		}
	}
	if err := t.state(); err != nil {
		return nil, onfailure.Wrap(t.op, err)
	}
	return t, nil
}

// open returns the entry's content.
func (t *target) open() (io.ReadCloser, error) {
	if t.src == "" {
		return io.NopCloser(bytes.NewReader(t.content)), nil
	}
	f, _, err := openRegular(t.src)
	return f, err
}

// digest returns the SHA-256 of the entry's content, streaming a src file.
func (t *target) digest(ctx context.Context) ([]byte, error) {
	rc, err := t.open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, rc}); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func (t *target) checkSum(got []byte) error {
	if bytes.Equal(got, t.sum) {
		return nil
	}
	return onfailure.Errorf(onfailure.Integrity, "sha256 mismatch: expected %x, actual %x", t.sum, got)
}

// state reads what is at the dest now and which of its parent directories
// are missing.
func (t *target) state() error {
	fi, err := os.Lstat(t.path)
	switch {
	case err == nil && fi.Mode().IsRegular():
		st := fi.Sys().(*syscall.Stat_t)
		t.existed = true
		t.prev = previousState{mode: st.Mode & 0o7777, uid: int(st.Uid), gid: int(st.Gid)}
	case err == nil:
		return fmt.Errorf("%s is not a regular file (%s)", t.path, fi.Mode().Type())
	case !securejoin.IsNotExist(err):
		return err
	}
	var missing []string
	for dir := filepath.Dir(t.path); ; dir = filepath.Dir(dir) {
		fi, err := os.Lstat(dir)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("parent %s is not a directory (%s)", dir, fi.Mode().Type())
			}
			break
		}
		if !securejoin.IsNotExist(err) {
			return err
		}
		missing = append(missing, dir)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		t.mkdirs = append(t.mkdirs, missing[i])
	}
	return nil
}

// record returns the undo data to journal: env.Undo's records, kept as they
// are since they describe the device before the first attempt, plus a
// record, with a backup copy in env.WorkDir, for every dest not in it yet.
func record(ctx context.Context, targets []*target, env *steps.Env) ([]byte, error) {
	u, err := decodeUndo(env.Undo)
	if err != nil {
		return nil, onfailure.E(onfailure.Unknown, "file step", err)
	}
	for _, t := range targets {
		for _, d := range t.mkdirs {
			u.addDir(d)
		}
		if u.hasFile(t.path) {
			continue
		}
		rec := fileRecord{Dest: t.dest, Path: t.path, Existed: t.existed}
		if t.existed {
			name := filepath.Join("backups", fmt.Sprint(len(u.Files)))
			if err := backup(ctx, t.path, env.WorkDir, name); err != nil {
				return nil, onfailure.Wrap(t.op+": back up "+t.path, err)
			}
			rec.Previous = &previous{Backup: name, Mode: fmt.Sprintf("%04o", t.prev.mode), UID: t.prev.uid, GID: t.prev.gid}
		}
		u.Files = append(u.Files, rec)
	}
	data, err := json.Marshal(u)
	if err != nil {
		return nil, onfailure.E(onfailure.Unknown, "encode file step undo data", err)
	}
	return data, nil
}

// backup copies path to name inside workDir, durably.
func backup(ctx context.Context, path, workDir, name string) error {
	if workDir == "" {
		return errors.New("no work directory for backups")
	}
	dst := filepath.Join(workDir, name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if err := SyncDir(workDir); err != nil {
		return err
	}
	f, _, err := openRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeAtomic(dst, ctxReader{ctx, f}, attrs{mode: 0o600, uid: -1, gid: -1}, nil)
}

// install writes one entry: its missing directories, then the file.
func (t *target) install(ctx context.Context) error {
	if err := makeDirs(t.mkdirs); err != nil {
		return onfailure.Wrap(t.op, err)
	}
	rc, err := t.open()
	if err != nil {
		return onfailure.Wrap(t.op, err)
	}
	defer rc.Close()
	var check func([]byte) error
	if t.sum != nil {
		check = t.checkSum
	}
	if err := writeAtomic(t.path, ctxReader{ctx, rc}, t.attrs(), check); err != nil {
		return onfailure.Wrap(t.op, err)
	}
	return nil
}

// attrs returns the mode and owner the entry's file gets: the entry's,
// else the replaced file's, else DefaultMode and the agent's owner.
func (t *target) attrs() attrs {
	a := attrs{mode: DefaultMode, uid: -1, gid: -1}
	if t.existed {
		a = attrs{mode: t.prev.mode, uid: t.prev.uid, gid: t.prev.gid}
	}
	if t.modeSet {
		a.mode = t.mode
	}
	if t.uid >= 0 {
		a.uid = t.uid
	}
	if t.gid >= 0 {
		a.gid = t.gid
	}
	return a
}

// makeDirs creates dirs, outermost first, with DirMode whatever the umask,
// and syncs each one's parent. A directory that exists by now (an earlier
// entry made it) is fine.
func makeDirs(dirs []string) error {
	for _, d := range dirs {
		if err := os.Mkdir(d, DirMode); err != nil {
			if errors.Is(err, os.ErrExist) {
				if fi, serr := os.Lstat(d); serr == nil && fi.IsDir() {
					continue
				}
			}
			return err
		}
		if err := os.Chmod(d, DirMode); err != nil {
			return err
		}
		if err := SyncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// Undo restores what undo (as journaled by Run) describes, as the package
// doc says: every recorded dest in reverse order, then the directories the
// step created, deepest first, if they are empty. It carries on past a
// failing record and returns every failure. Running it again gives the
// same result.
func (r *Runner) Undo(ctx context.Context, s *flow.Step, env *steps.Env, undo []byte) error {
	u, err := decodeUndo(undo)
	if err != nil {
		return onfailure.E(onfailure.Unknown, "revert files", err)
	}
	var probs problems
	for i := len(u.Files) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("revert files stopped: %w", context.Cause(ctx))
		}
		if err := restore(ctx, env, u.Files[i]); err != nil {
			probs = append(probs, err)
		}
	}
	dirs := append([]string(nil), u.Dirs...)
	sort.SliceStable(dirs, func(i, j int) bool {
		return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/")
	})
	for _, d := range dirs {
		err := os.Remove(d)
		switch {
		case err == nil:
			logf(env, "removed directory %s", d)
			if err := SyncDir(filepath.Dir(d)); err != nil && !securejoin.IsNotExist(err) {
				probs = append(probs, onfailure.Wrap("revert files: directory "+d, err))
			}
		case securejoin.IsNotExist(err), errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST):
			// Gone already, or holds files the step did not write: keep it.
		default:
			probs = append(probs, onfailure.Wrap("revert files: directory "+d, err))
		}
	}
	return probs.err()
}

// restore puts one recorded dest back as it was.
func restore(ctx context.Context, env *steps.Env, f fileRecord) error {
	op := "revert dest " + f.Dest
	dir := filepath.Dir(f.Path)
	// The path was real when it was recorded; never write through a
	// symbolic link that appeared in it since.
	if real, err := realPath(dir); err != nil {
		return onfailure.Wrap(op, err)
	} else if real != dir {
		return onfailure.Errorf(onfailure.Authorization,
			"%s: directory %s now resolves through a symbolic link to %s; not touching it", op, dir, real)
	}
	if !f.Existed {
		fi, err := os.Lstat(f.Path)
		switch {
		case securejoin.IsNotExist(err):
			return nil
		case err != nil:
			return onfailure.Wrap(op, err)
		case fi.IsDir():
			return onfailure.Errorf(onfailure.Unknown, "%s: %s is a directory now; not removing it", op, f.Path)
		}
		if err := os.Remove(f.Path); err != nil && !securejoin.IsNotExist(err) {
			return onfailure.Wrap(op, err)
		}
		if err := SyncDir(dir); err != nil {
			return onfailure.Wrap(op, err)
		}
		logf(env, "removed %s", f.Path)
		return nil
	}
	p := f.Previous
	if env == nil || env.WorkDir == "" {
		return onfailure.Errorf(onfailure.Unknown, "%s: no work directory to read the backup %s from", op, p.Backup)
	}
	mode, _ := parseMode(p.Mode) // checked by decodeUndo
	b, _, err := openRegular(filepath.Join(env.WorkDir, p.Backup))
	if err != nil {
		return onfailure.Wrap(op+": backup", err)
	}
	defer b.Close()
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return onfailure.Wrap(op, err)
	}
	if err := writeAtomic(f.Path, ctxReader{ctx, b}, attrs{mode: mode, uid: p.UID, gid: p.GID}, nil); err != nil {
		return onfailure.Wrap(op, err)
	}
	logf(env, "restored %s", f.Path)
	return nil
}

func logf(env *steps.Env, format string, args ...any) {
	if env != nil && env.Log != nil {
		fmt.Fprintf(env.Log, format+"\n", args...)
	}
}

// problems is several errors reported at once, on one line.
type problems []error

func (p problems) Error() string {
	s := make([]string, len(p))
	for i, err := range p {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (p problems) Unwrap() []error { return p }

// err returns nil, the only error, or all of them.
func (p problems) err() error {
	switch len(p) {
	case 0:
		return nil
	case 1:
		return p[0]
	}
	return p
}
