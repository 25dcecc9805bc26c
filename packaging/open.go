package packaging

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Limits caps what a device accepts from a bundle. Zero fields take the
// defaults.
type Limits struct {
	// MaxManifestBytes caps manifest.json (default 1 MiB).
	MaxManifestBytes int64
	// MaxEntries caps the number of payload entries (default 10000).
	MaxEntries int
	// MaxEntryBytes caps one entry (default 4 GiB).
	MaxEntryBytes int64
	// MaxTotalBytes caps the sum of the entries (default 8 GiB).
	MaxTotalBytes int64
}

// Default limits.
const (
	DefaultMaxManifestBytes = 1 << 20
	DefaultMaxEntries       = 10000
	DefaultMaxEntryBytes    = 4 << 30
	DefaultMaxTotalBytes    = 8 << 30
)

func (l Limits) withDefaults() Limits {
	if l.MaxManifestBytes <= 0 {
		l.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxEntryBytes <= 0 {
		l.MaxEntryBytes = DefaultMaxEntryBytes
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = DefaultMaxTotalBytes
	}
	return l
}

// VerifyOptions is what a device checks a bundle against.
type VerifyOptions struct {
	// Trusted are the keys that may sign bundles. With none, a signature
	// is not required (and a present one cannot be checked); with any, an
	// unsigned bundle, or one not signed by one of them, is refused.
	Trusted []PublicKey
	// Now is the time expiry is checked against; zero means time.Now().
	Now time.Time
	// DeviceID is this device's id, checked against the manifest's devices.
	DeviceID string
	// Labels are this device's labels; every manifest label must match.
	Labels map[string]string
	// Installed is the version installed for this flow name, 0 for none.
	// A bundle whose version is below it is refused, and one equal to it
	// too unless AllowReinstall is set.
	Installed uint64
	// AllowReinstall accepts a bundle whose version equals Installed (an
	// operator re-running the same release on purpose).
	AllowReinstall bool
	// Limits caps sizes; zero fields take the defaults.
	Limits Limits
}

// Bundle is a bundle that passed every check.
type Bundle struct {
	// Manifest is the bundle's manifest.
	Manifest *Manifest
	// Dir is where Extract put the payload; empty for Verify and Inspect.
	Dir string
	// Signed says the bundle carries a signature.
	Signed bool
	// Verified says the signature was checked against a trusted key
	// (KeyID). A signed bundle read without trusted keys is not Verified.
	Verified bool
	// KeyID is the id of the trusted key that verified the signature.
	KeyID string
}

// FlowPath returns the path of the extracted flow document.
func (b *Bundle) FlowPath() string {
	return filepath.Join(b.Dir, filepath.FromSlash(b.Manifest.FlowFile))
}

// sigSize is the length of manifest.sig: a raw Ed25519 signature.
const sigSize = ed25519.SignatureSize

// Verify reads a whole bundle from r and checks it against opts: signature,
// manifest, expiry, device, labels, version, and every entry's name, order,
// type, size and sha256. It holds no payload in memory. A refusal is an
// Integrity error saying what and where.
func Verify(r io.Reader, opts VerifyOptions) (*Manifest, error) {
	b, err := read(r, opts, true, func(_ Entry, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	return b.Manifest, nil
}

// Inspect reads a bundle's manifest and signature, without checking the
// signature, the device policy or the payload: it is for showing what a
// bundle says it is, never for deciding to run it.
func Inspect(r io.Reader, lim Limits) (*Bundle, error) {
	return read(r, VerifyOptions{Limits: lim}, false, nil)
}

// Extract verifies the bundle file at file as Verify does and writes its
// payload under dest, which must not exist. It writes into a temporary
// directory beside dest, fsyncs it, and renames it to dest only when every
// check passed, so a refused bundle leaves nothing. Files are 0644 and
// directories 0755; nothing follows a link.
func Extract(file, dest string, opts VerifyOptions) (_ *Bundle, err error) {
	dest, err = filepath.Abs(dest)
	if err != nil {
		return nil, fmt.Errorf("extract bundle: %w", err)
	}
	if _, err := os.Lstat(dest); err == nil {
		return nil, fmt.Errorf("extract bundle to %s: %w", dest, os.ErrExist)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, onfailure.Wrap("open bundle", err)
	}
	defer f.Close()
	tmp, err := os.MkdirTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".partial-")
	if err != nil {
		return nil, onfailure.Wrap("extract bundle", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return nil, onfailure.Wrap("extract bundle", err)
	}
	defer root.Close()
	dirs := []string{"."}
	made := map[string]bool{".": true}
	b, err := read(f, opts, true, func(e Entry, r io.Reader) error {
		dir := path.Dir(e.Path)
		if !made[dir] {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return writeErr(e, err)
			}
			for d := dir; !made[d]; d = path.Dir(d) {
				made[d] = true
				dirs = append(dirs, d)
			}
		}
		out, err := root.OpenFile(e.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return writeErr(e, err)
		}
		defer out.Close()
		if _, err := io.Copy(out, r); err != nil {
			var oe *onfailure.Error
			if errors.As(err, &oe) {
				return err // reading the bundle failed; the reader said how
			}
			return writeErr(e, err)
		}
		if err := out.Chmod(0o644); err != nil {
			return writeErr(e, err)
		}
		if err := syncFile(out); err != nil {
			return writeErr(e, err)
		}
		return out.Close()
	})
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", file, err)
	}
	for _, d := range dirs {
		if err := root.Chmod(d, 0o755); err != nil {
			return nil, onfailure.Wrap("extract bundle", err)
		}
		if err := syncDir(filepath.Join(tmp, d)); err != nil {
			return nil, onfailure.Wrap("extract bundle", err)
		}
	}
	if err := os.Rename(tmp, dest); err != nil {
		return nil, onfailure.Wrap("extract bundle", err)
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return nil, onfailure.Wrap("extract bundle", err)
	}
	b.Dir = dest
	return b, nil
}

func writeErr(e Entry, err error) error {
	return onfailure.Wrap("write "+e.Path, err)
}

// skipSync turns fsync off; only the fuzz test sets it, to run fast.
var skipSync bool

func syncFile(f *os.File) error {
	if skipSync {
		return nil
	}
	return f.Sync()
}

func syncDir(dir string) error {
	if skipSync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// sourceReader remembers the last error of the reader under the bundle, so
// a failing disk or network is told apart from a malformed bundle.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// bundleErr turns an error reading the bundle into a refusal, unless the
// source itself failed, which keeps its own kind.
func bundleErr(src *sourceReader, what string, err error) error {
	if src.err != nil {
		return onfailure.Wrap("read bundle", src.err)
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return refuse("%s: not a valid bundle (truncated or corrupt tar): %v", what, err)
}

// entryReader hashes and counts an entry as the sink reads it, and marks
// errors from the bundle so they are told apart from write errors.
type entryReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	src *sourceReader
	e   Entry
}

func (er *entryReader) Read(p []byte) (int, error) {
	n, err := er.r.Read(p)
	er.h.Write(p[:n])
	er.n += int64(n)
	if err != nil && err != io.EOF {
		err = bundleErr(er.src, fmt.Sprintf("entry %q", er.e.Path), err)
	}
	return n, err
}

// read is the one reader behind Verify, Inspect and Extract. With check
// false it stops after the manifest and checks no policy. sink gets each
// entry's content in turn.
func read(r io.Reader, opts VerifyOptions, check bool, sink func(Entry, io.Reader) error) (*Bundle, error) {
	lim := opts.Limits.withDefaults()
	for _, k := range opts.Trusted {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("verify bundle: a trusted key is %d bytes, not an Ed25519 public key", len(k))
		}
	}
	src := &sourceReader{r: r}
	br := bufio.NewReader(src)
	var in io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, bundleErr(src, "gzip header", err)
		}
		in = zr
	}
	tr := tar.NewReader(in)
	next := func(what string) (*tar.Header, error) {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) && src.err == nil {
			return nil, nil
		}
		if errors.Is(err, tar.ErrInsecurePath) && h != nil {
			return h, nil // checkPath refuses it with a clearer message
		}
		if err != nil {
			return nil, bundleErr(src, what, err)
		}
		return h, nil
	}

	// manifest.json, then manifest.sig if signed.
	h, err := next("first entry")
	if err != nil {
		return nil, err
	}
	if h == nil {
		return nil, refuse("empty bundle: no %s", ManifestName)
	}
	if h.Name != ManifestName {
		return nil, refuse("first entry is %q; a bundle starts with %s", h.Name, ManifestName)
	}
	if err := regular(h); err != nil {
		return nil, err
	}
	if h.Size > lim.MaxManifestBytes {
		return nil, refuse("%s is %d bytes, over the %d byte limit", ManifestName, h.Size, lim.MaxManifestBytes)
	}
	mdata := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, mdata); err != nil {
		return nil, bundleErr(src, ManifestName, err)
	}
	if h, err = next("entry after " + ManifestName); err != nil {
		return nil, err
	}
	var sig []byte
	if h != nil && h.Name == SignatureName {
		if err := regular(h); err != nil {
			return nil, err
		}
		if h.Size != sigSize {
			return nil, refuse("%s is %d bytes; an Ed25519 signature is %d", SignatureName, h.Size, sigSize)
		}
		sig = make([]byte, sigSize)
		if _, err := io.ReadFull(tr, sig); err != nil {
			return nil, bundleErr(src, SignatureName, err)
		}
		if h, err = next("entry after " + SignatureName); err != nil {
			return nil, err
		}
	}
	b := &Bundle{Signed: sig != nil}

	// The signature is checked before the manifest is decoded: with keys
	// configured, unsigned bytes never reach the JSON decoder for use.
	if check && len(opts.Trusted) > 0 {
		if sig == nil {
			return nil, refuse("bundle is unsigned, and this device requires a signature by one of its %d trusted keys", len(opts.Trusted))
		}
		for _, k := range opts.Trusted {
			if ed25519.Verify(ed25519.PublicKey(k), mdata, sig) {
				b.Verified, b.KeyID = true, k.ID()
				break
			}
		}
		if !b.Verified {
			return nil, badSignature(mdata, opts.Trusted)
		}
	}
	m, err := DecodeManifest(mdata, lim)
	if err != nil {
		return nil, err
	}
	b.Manifest = m
	if !check {
		return b, nil
	}
	if b.Verified && m.KeyID != b.KeyID {
		return nil, refuse("%s names key %q but was signed by trusted key %s", ManifestName, m.KeyID, b.KeyID)
	}
	if err := policy(m, opts); err != nil {
		return nil, err
	}

	// The payload, entry by entry, in manifest order.
	index := make(map[string]int, len(m.Entries))
	for i, e := range m.Entries {
		index[e.Path] = i
	}
	for i, e := range m.Entries {
		if h == nil {
			return nil, refuse("entry %q (%d of %d) is missing: the bundle ends early", e.Path, i+1, len(m.Entries))
		}
		if err := checkPath(h.Name); err != nil {
			return nil, refuse("tar entry %d: %v", i+3, err)
		}
		if err := regular(h); err != nil {
			return nil, err
		}
		if h.Name != e.Path {
			if j, ok := index[h.Name]; ok {
				return nil, refuse("tar entry %q is out of order: expected %q (entry %d of %d), it is entry %d", h.Name, e.Path, i+1, len(m.Entries), j+1)
			}
			return nil, refuse("tar entry %q is not in the manifest", h.Name)
		}
		if h.Size != e.Size {
			return nil, refuse("entry %q: the tar says %d bytes, the manifest %d", e.Path, h.Size, e.Size)
		}
		er := &entryReader{r: tr, h: sha256.New(), src: src, e: e}
		if err := sink(e, er); err != nil {
			return nil, err
		}
		if er.n != e.Size {
			return nil, refuse("entry %q: %d bytes read, the manifest says %d", e.Path, er.n, e.Size)
		}
		if sum := hex.EncodeToString(er.h.Sum(nil)); sum != e.SHA256 {
			return nil, refuse("entry %q: sha256 is %s, the manifest says %s", e.Path, sum, e.SHA256)
		}
		if h, err = next(fmt.Sprintf("entry after %q", e.Path)); err != nil {
			return nil, err
		}
	}
	if h != nil {
		if _, ok := index[h.Name]; ok {
			return nil, refuse("tar entry %q appears twice", h.Name)
		}
		return nil, refuse("tar entry %q is not in the manifest", h.Name)
	}
	return b, nil
}

// regular refuses any tar entry but a regular file.
func regular(h *tar.Header) error {
	if h.Typeflag == tar.TypeReg {
		return nil
	}
	what := map[byte]string{
		tar.TypeSymlink: "symbolic link", tar.TypeLink: "hard link",
		tar.TypeChar: "character device", tar.TypeBlock: "block device",
		tar.TypeDir: "directory", tar.TypeFifo: "named pipe",
	}[h.Typeflag]
	if what == "" {
		what = fmt.Sprintf("entry of type %q", h.Typeflag)
	}
	return refuse("tar entry %q is a %s; a bundle holds regular files only", h.Name, what)
}

// badSignature says why no trusted key verified the manifest: it names a
// key the device does not trust, or the signature is wrong.
func badSignature(mdata []byte, trusted []PublicKey) error {
	ids := make([]string, len(trusted))
	for i, k := range trusted {
		ids[i] = k.ID()
	}
	var named struct {
		KeyID string `json:"keyId"`
	}
	if json.Unmarshal(mdata, &named) == nil && named.KeyID != "" && !slices.Contains(ids, named.KeyID) {
		return refuse("bundle is signed by unknown key %q; trusted keys: %s", named.KeyID, strings.Join(ids, ", "))
	}
	return refuse("bad signature: %s does not verify with any trusted key (%s)", SignatureName, strings.Join(ids, ", "))
}

// policy checks expiry, device, labels and version.
func policy(m *Manifest, opts VerifyOptions) error {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	if m.Expires != nil && !now.Before(*m.Expires) {
		return refuse("bundle for flow %q version %d expired at %s", m.Flow, m.Version, m.Expires.UTC().Format(time.RFC3339))
	}
	if len(m.Devices) > 0 && !slices.Contains(m.Devices, opts.DeviceID) {
		id := opts.DeviceID
		if id == "" {
			id = "(no device id)"
		}
		return refuse("bundle is for devices %s, not %s", strings.Join(m.Devices, ", "), id)
	}
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		if got, ok := opts.Labels[k]; !ok || got != m.Labels[k] {
			if !ok {
				return refuse("bundle is for devices with label %s=%s; this device has no label %s", k, m.Labels[k], k)
			}
			return refuse("bundle is for devices with label %s=%s; this device has %s=%s", k, m.Labels[k], k, got)
		}
	}
	switch {
	case m.Version < opts.Installed:
		return refuse("bundle for flow %q is version %d, older than the installed version %d (a downgrade or replay)", m.Flow, m.Version, opts.Installed)
	case m.Version == opts.Installed && !opts.AllowReinstall:
		return refuse("bundle for flow %q is version %d, which is already installed (allow a reinstall to run it again)", m.Flow, m.Version)
	}
	return nil
}
