package file

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// attrs are the mode and owner a written file gets. Mode holds the Unix
// permission bits, setuid, setgid and sticky included (07777). A UID or GID
// of -1 keeps what the new file got when it was created: the agent's.
type attrs struct {
	mode     uint32
	uid, gid int
}

// tempInfix marks the temporary files writeAtomic creates next to their
// destination: ".NAME.edgeflow-RANDOM".
const tempInfix = ".edgeflow-"

// writeAtomic replaces path with the bytes read from src, so that path
// holds either its old content or all of the new content, never a mix:
// the bytes go to a temporary file in path's directory, which is checked
// (check gets the content's SHA-256; nil skips hashing), chowned, chmoded,
// fsynced and renamed over path; then the directory is fsynced. Chown comes
// before chmod because chown clears setuid and setgid. On any error the
// temporary file is removed and path is left as it was. Both installing a
// file and restoring one from its backup use it.
func writeAtomic(path string, src io.Reader, a attrs, check func(sum []byte) error) (err error) {
	dir, base := filepath.Split(path)
	if len(base) > 200 {
		base = base[:200] // keep the temporary name within NAME_MAX
	}
	f, err := os.CreateTemp(dir, "."+base+tempInfix+"*")
	if err != nil {
		return err
	}
	tmp, renamed := f.Name(), false
	defer func() {
		if err != nil && !renamed {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	var w io.Writer = f
	h := sha256.New()
	if check != nil {
		w = io.MultiWriter(f, h)
	}
	if _, err = io.Copy(w, src); err != nil {
		return err
	}
	if check != nil {
		if err = check(h.Sum(nil)); err != nil {
			return err
		}
	}
	if a.uid >= 0 || a.gid >= 0 {
		if err = f.Chown(a.uid, a.gid); err != nil {
			return err
		}
	}
	if err = f.Chmod(fileMode(a.mode)); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	renamed = true
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that entries created, renamed or removed in
// it survive a power loss. File systems that cannot sync a directory
// (EINVAL) are taken as having nothing to sync.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, syscall.EINVAL) {
		return nil
	}
	return err
}

// fileMode converts Unix mode bits (07777) to an os.FileMode.
func fileMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// openRegular opens path for reading, refusing anything but a regular file:
// a symbolic link as the last component is not followed, and a FIFO or a
// device is refused before it is read (O_NONBLOCK keeps the open of a FIFO
// from waiting for a writer; it has no effect on a regular file).
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return f, fi, nil
}

// ctxReader stops a long copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.r.Read(p)
}

// Install replaces path atomically with the bytes of src, with the
// permission bits mode and the agent's owner, as a file step installs an
// entry: path holds its old content or all of the new, never a mix. Other
// step types that keep files of their own (the compose step's project
// file) use it.
func Install(path string, src io.Reader, mode os.FileMode) error {
	return writeAtomic(path, src, attrs{mode: uint32(mode.Perm()), uid: -1, gid: -1}, nil)
}
