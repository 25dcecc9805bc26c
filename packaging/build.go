package packaging

import (
	"archive/tar"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/flow"
)

// Options says how Build makes a bundle.
type Options struct {
	// Key signs the manifest; nil builds an unsigned bundle.
	Key PrivateKey
	// Version is the release number, at least 1.
	Version uint64
	// Created is the build time; zero means now.
	Created time.Time
	// Expires, when not zero, is when devices stop accepting the bundle.
	Expires time.Time
	// Devices, when set, are the only device ids that accept the bundle.
	Devices []string
	// Labels, when set, must all match a device's labels.
	Labels map[string]string
	// Gzip compresses the bundle.
	Gzip bool
	// Include adds files or directory trees (paths relative to the flow's
	// directory) that the flow does not name, such as files a script reads.
	Include []string
}

// Plan is a bundle ready to write: its manifest (already hashed) and where
// each entry's content comes from.
type Plan struct {
	// Manifest is the manifest Write will sign and write.
	Manifest *Manifest
	key      PrivateKey
	gzip     bool
	sources  []source // parallel to Manifest.Entries
}

// source is where an entry's content comes from: the flow document as it
// was validated (data), or a file on disk (file).
type source struct {
	data []byte
	file string
}

// Build collects the flow at flowPath and every file it refers to, and
// writes a bundle of them to w. It is Collect followed by Plan.Write.
func Build(flowPath string, w io.Writer, opts Options) (*Manifest, error) {
	p, err := Collect(flowPath, opts)
	if err != nil {
		return nil, err
	}
	if err := p.Write(w); err != nil {
		return nil, err
	}
	return p.Manifest, nil
}

// Collect loads and validates the flow at flowPath (an invalid flow
// returns its flow.Problems), finds every file it refers to — file step
// src, compose file and images, container imageArchive, the tree of a
// script's relative workdir, a script run as ./NAME, and opts.Include —
// and hashes them in one streaming pass. Paths must stay inside the flow's
// directory; a symbolic link that leads out, or anything but a regular
// file, is refused.
func Collect(flowPath string, opts Options) (*Plan, error) {
	if opts.Version == 0 {
		return nil, errors.New("bundle: version must be at least 1")
	}
	f, err := flow.Load(flowPath)
	if err != nil {
		return nil, err
	}
	created := opts.Created
	if created.IsZero() {
		created = time.Now()
	}
	created = created.UTC().Truncate(time.Second)
	m := &Manifest{
		Format:   Format,
		Flow:     f.Name,
		FlowFile: filepath.Base(flowPath),
		Version:  opts.Version,
		Created:  created,
		Devices:  opts.Devices,
		Labels:   opts.Labels,
	}
	if !opts.Expires.IsZero() {
		exp := opts.Expires.UTC().Truncate(time.Second)
		if !exp.After(created) {
			return nil, fmt.Errorf("bundle: expiry %s is not after the build time %s", exp.Format(time.RFC3339), created.Format(time.RFC3339))
		}
		m.Expires = &exp
	}
	for _, d := range opts.Devices {
		if d == "" {
			return nil, errors.New("bundle: an empty device id")
		}
	}
	if opts.Key != nil {
		if len(opts.Key) != ed25519.PrivateKeySize {
			return nil, errors.New("bundle: signing key is not an Ed25519 private key")
		}
		m.KeyID = opts.Key.ID()
	}
	if err := checkPath(m.FlowFile); err != nil {
		return nil, fmt.Errorf("bundle: flow file name: %w", err)
	}

	c, err := newCollector(f.Dir)
	if err != nil {
		return nil, err
	}
	c.files[m.FlowFile] = "" // the flow document itself, from f.Source
	walkFlow(f, c)
	for _, inc := range opts.Include {
		c.tree("--include", filepath.ToSlash(inc))
	}
	if err := errors.Join(c.errs...); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", flowPath, err)
	}

	p := &Plan{Manifest: m, key: opts.Key, gzip: opts.Gzip}
	p.add(m.FlowFile, source{data: f.Source})
	rels := make([]string, 0, len(c.files))
	for rel := range c.files {
		if rel != m.FlowFile {
			rels = append(rels, rel)
		}
	}
	sort.Strings(rels)
	for _, rel := range rels {
		p.add(rel, source{file: c.files[rel]})
	}
	for i := range m.Entries {
		if err := p.hash(i); err != nil {
			return nil, err
		}
	}
	if err := m.check(Limits{MaxManifestBytes: 1 << 62, MaxEntries: 1 << 30, MaxEntryBytes: 1 << 62, MaxTotalBytes: 1 << 62}); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", flowPath, err)
	}
	return p, nil
}

func (p *Plan) add(rel string, s source) {
	p.Manifest.Entries = append(p.Manifest.Entries, Entry{Path: rel})
	p.sources = append(p.sources, s)
}

// Files returns the files on disk the bundle's entries come from.
func (p *Plan) Files() []string {
	var out []string
	for _, s := range p.sources {
		if s.file != "" {
			out = append(out, s.file)
		}
	}
	return out
}

// hash fills in entry i's size and sha256, reading its file once.
func (p *Plan) hash(i int) error {
	e, s := &p.Manifest.Entries[i], p.sources[i]
	h := sha256.New()
	if s.file == "" {
		h.Write(s.data)
		e.Size = int64(len(s.data))
	} else {
		f, err := openRegular(s.file)
		if err != nil {
			return fmt.Errorf("bundle entry %s: %w", e.Path, err)
		}
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("bundle entry %s: read %s: %w", e.Path, s.file, err)
		}
		e.Size = n
	}
	e.SHA256 = hex.EncodeToString(h.Sum(nil))
	return nil
}

// Write writes the bundle: manifest, signature (if signed), then every
// entry, streaming each file from disk. A file that changed since Collect
// hashed it fails the write.
func (p *Plan) Write(w io.Writer) error {
	mdata, err := p.Manifest.Encode()
	if err != nil {
		return err
	}
	var zw *gzip.Writer
	out := w
	if p.gzip {
		zw = gzip.NewWriter(w)
		out = zw
	}
	tw := tar.NewWriter(out)
	mod := p.Manifest.Created
	hdr := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Size: size, Mode: 0o644, Typeflag: tar.TypeReg, ModTime: mod, Format: tar.FormatPAX}
	}
	if err := writeBytes(tw, hdr(ManifestName, int64(len(mdata))), mdata); err != nil {
		return err
	}
	if p.key != nil {
		sig := ed25519.Sign(ed25519.PrivateKey(p.key), mdata)
		if err := writeBytes(tw, hdr(SignatureName, int64(len(sig))), sig); err != nil {
			return err
		}
	}
	for i, e := range p.Manifest.Entries {
		s := p.sources[i]
		if s.file == "" {
			if err := writeBytes(tw, hdr(e.Path, e.Size), s.data); err != nil {
				return err
			}
			continue
		}
		if err := writeFile(tw, hdr(e.Path, e.Size), s.file, e.SHA256); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
	}
	return nil
}

func writeBytes(tw *tar.Writer, h *tar.Header, data []byte) error {
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write bundle entry %s: %w", h.Name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("write bundle entry %s: %w", h.Name, err)
	}
	return nil
}

func writeFile(tw *tar.Writer, h *tar.Header, file, sum string) error {
	f, err := openRegular(file)
	if err != nil {
		return fmt.Errorf("write bundle entry %s: %w", h.Name, err)
	}
	defer f.Close()
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write bundle entry %s: %w", h.Name, err)
	}
	hs := sha256.New()
	n, err := io.CopyN(tw, io.TeeReader(f, hs), h.Size)
	if errors.Is(err, io.EOF) || err == nil && hex.EncodeToString(hs.Sum(nil)) != sum {
		return fmt.Errorf("write bundle entry %s: %s changed while the bundle was being built (%d of %d bytes read)", h.Name, file, n, h.Size)
	}
	if err != nil {
		return fmt.Errorf("write bundle entry %s: %w", h.Name, err)
	}
	return nil
}

// openRegular opens path for reading, refusing anything but a regular file.
func openRegular(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return f, nil
}

// collector finds the files a flow refers to, inside its directory.
type collector struct {
	root, realRoot string
	files          map[string]string // bundle path -> real file on disk
	errs           []error
}

func newCollector(root string) (*collector, error) {
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("bundle: flow directory: %w", err)
	}
	return &collector{root: root, realRoot: real, files: map[string]string{}}, nil
}

func (c *collector) fail(what, rel, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%s %q: %s", what, rel, fmt.Sprintf(format, args...)))
}

// resolve returns the real path of rel inside the flow directory and what
// is there, refusing paths and links that lead out.
func (c *collector) resolve(what, rel string) (string, fs.FileInfo, bool) {
	if err := checkPath(rel); err != nil {
		c.fail(what, rel, "%v", err)
		return "", nil, false
	}
	real, err := filepath.EvalSymlinks(filepath.Join(c.root, filepath.FromSlash(rel)))
	if err != nil {
		c.fail(what, rel, "%v", err)
		return "", nil, false
	}
	in, err := filepath.Rel(c.realRoot, real)
	if err != nil || in == ".." || strings.HasPrefix(in, ".."+string(filepath.Separator)) || filepath.IsAbs(in) {
		c.fail(what, rel, "a symbolic link leads outside the flow directory (to %s)", real)
		return "", nil, false
	}
	st, err := os.Stat(real)
	if err != nil {
		c.fail(what, rel, "%v", err)
		return "", nil, false
	}
	return real, st, true
}

// file adds the regular file rel.
func (c *collector) file(what, rel string) {
	if rel == "" {
		return
	}
	rel = path.Clean(rel)
	real, st, ok := c.resolve(what, rel)
	if !ok {
		return
	}
	if !st.Mode().IsRegular() {
		c.fail(what, rel, "not a regular file")
		return
	}
	c.files[rel] = real
}

// tree adds rel: a regular file, or every regular file under a directory.
func (c *collector) tree(what, rel string) {
	rel = path.Clean(rel)
	real, st, ok := c.resolve(what, rel)
	if !ok {
		return
	}
	if !st.IsDir() {
		c.file(what, rel)
		return
	}
	err := filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		sub, err := filepath.Rel(real, p)
		if err != nil {
			return err
		}
		name := path.Join(rel, filepath.ToSlash(sub))
		if d.Type()&fs.ModeSymlink != 0 {
			if _, st, ok := c.resolve(what, name); ok && st.IsDir() {
				c.fail(what, name, "a symbolic link to a directory; bundles hold regular files only")
				return nil
			}
		}
		c.file(what, name)
		return nil
	})
	if err != nil {
		c.fail(what, rel, "%v", err)
	}
}

// walkFlow visits every step of f, rollback steps included.
func walkFlow(f *flow.Flow, c *collector) {
	var entries func([]flow.Entry)
	steps := func(ss []*flow.Step) {
		for _, s := range ss {
			stepFiles(s, c)
		}
	}
	entries = func(es []flow.Entry) {
		for _, e := range es {
			switch {
			case e.Step != nil:
				stepFiles(e.Step, c)
			case e.Group != nil:
				entries(e.Group.Steps)
				steps(e.Group.Rollback)
			default:
				entries(e.Parallel)
			}
		}
	}
	entries(f.Steps)
	steps(f.Rollback)
}

func stepFiles(s *flow.Step, c *collector) {
	what := fmt.Sprintf("step %q:", s.Name)
	if s.File != nil {
		for _, e := range s.File.Entries {
			c.file(what+" src", e.Src)
		}
	}
	if s.Compose != nil {
		c.file(what+" compose file", s.Compose.File)
		for _, img := range s.Compose.Images {
			c.file(what+" compose images", img)
		}
	}
	if s.Container != nil {
		c.file(what+" imageArchive", s.Container.ImageArchive)
	}
	if s.Script != nil {
		scriptFiles(what, s.Script, c)
	}
	for _, a := range s.OnFailure {
		if a.Script != nil {
			scriptFiles(what+" onFailure", a.Script, c)
		}
	}
}

// scriptFiles adds a script's relative workdir tree, and every word of its
// run text written ./NAME that names a file in its working directory.
func scriptFiles(what string, s *flow.Script, c *collector) {
	dir := "."
	if s.Workdir != "" && !path.IsAbs(s.Workdir) {
		dir = path.Clean(s.Workdir)
		if dir != "." {
			c.tree(what+" workdir", dir)
		}
	}
	if path.IsAbs(s.Workdir) {
		return
	}
	for _, word := range strings.Fields(s.Run) {
		if !strings.HasPrefix(word, "./") {
			continue
		}
		prog := path.Join(dir, word)
		if st, err := os.Lstat(filepath.Join(c.root, filepath.FromSlash(prog))); err != nil || st.IsDir() {
			continue // not a file when bundling: the script may create it
		}
		c.file(what+" run", prog)
	}
}
