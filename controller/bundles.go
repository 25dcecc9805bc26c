package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/packaging"
)

// uploadPattern names an upload in progress in the bundle dir.
const uploadPattern = ".upload-*"

// bundlePath returns where a bundle's bytes are kept.
func (c *Controller) bundlePath(sha string) string {
	return filepath.Join(c.bundleDir, sha+".bundle")
}

// AddBundle reads a bundle from r (at most Options.MaxBundleSize bytes)
// into a temporary file in Data/bundles, computes its sha256 and reads its
// manifest (packaging.Inspect: what it says it is; agents verify its
// signature), then fsyncs it, renames it to SHA256.bundle and stores its
// metadata. Adding the same bytes again returns the stored bundle and
// created false. Something that is not a bundle is an *Error with code
// invalid, one over the size cap with code too_large.
func (c *Controller) AddBundle(ctx context.Context, r io.Reader) (_ api.Bundle, created bool, err error) {
	f, err := os.CreateTemp(c.bundleDir, uploadPattern)
	if err != nil {
		return api.Bundle{}, false, fmt.Errorf("add bundle: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if tmp != "" {
			_ = os.Remove(tmp)
		}
	}()
	max := c.opts.MaxBundleSize
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, max+1))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe) || n > max:
		return api.Bundle{}, false, &Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("bundle over the %d-byte upload limit", max)}
	case err != nil:
		return api.Bundle{}, false, invalid("read the upload: %v", err)
	case n == 0:
		return api.Bundle{}, false, invalid("empty upload: want the bytes of a bundle made by \"edgeflow bundle build\"")
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return api.Bundle{}, false, fmt.Errorf("add bundle: %w", err)
	}
	info, err := packaging.Inspect(f, packaging.Limits{})
	if err != nil {
		return api.Bundle{}, false, invalid("not a bundle: %v", err)
	}
	sha := hex.EncodeToString(h.Sum(nil))
	if err := f.Sync(); err != nil {
		return api.Bundle{}, false, fmt.Errorf("add bundle %s: %w", sha, err)
	}
	if err := f.Close(); err != nil {
		return api.Bundle{}, false, fmt.Errorf("add bundle %s: %w", sha, err)
	}
	f = nil
	final := c.bundlePath(sha)
	if st, err := os.Stat(final); err != nil || st.Size() != n {
		if err := os.Rename(tmp, final); err != nil {
			return api.Bundle{}, false, fmt.Errorf("add bundle %s: %w", sha, err)
		}
		tmp = ""
		if err := syncDir(c.bundleDir); err != nil {
			return api.Bundle{}, false, fmt.Errorf("add bundle %s: %w", sha, err)
		}
	}
	keyID := info.KeyID
	if keyID == "" {
		keyID = info.Manifest.KeyID
	}
	rec, created, err := c.st.AddBundle(ctx, store.Bundle{
		SHA256: sha, Size: n, Flow: info.Manifest.Flow, Version: info.Manifest.Version, KeyID: keyID, Created: c.now().UTC(),
	})
	if err != nil {
		return api.Bundle{}, false, err
	}
	if created {
		c.log.Info("bundle added", "bundle", sha, "flow", rec.Flow, "version", rec.Version, "size", n)
	}
	return c.bundleView(rec), created, nil
}

// openBundle opens a stored bundle's bytes.
func (c *Controller) openBundle(ctx context.Context, sha string) (*os.File, store.Bundle, error) {
	b, err := c.st.Bundle(ctx, sha)
	if err != nil {
		return nil, store.Bundle{}, lookup(err, "bundle %s not found", sha)
	}
	f, err := os.Open(c.bundlePath(sha))
	if err != nil {
		return nil, store.Bundle{}, fmt.Errorf("bundle %s: %w", sha, err)
	}
	return f, b, nil
}

// syncDir fsyncs a directory, so that a rename in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
