package packaging

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Format is the manifest format this package writes and reads.
const Format = 1

// Names of the first two tar entries of a bundle.
const (
	ManifestName  = "manifest.json"
	SignatureName = "manifest.sig"
)

// Manifest describes a bundle. It is signed, so every field is something
// the operator vouched for.
type Manifest struct {
	// Format is the manifest format, 1.
	Format int `json:"format"`
	// Flow is the flow's name (its document's name key).
	Flow string `json:"flow"`
	// FlowFile is the payload path of the flow document.
	FlowFile string `json:"flowFile"`
	// Version is the release number; a device refuses a bundle whose
	// version is not above the one it has installed for this flow.
	Version uint64 `json:"version"`
	// Created is when the bundle was built.
	Created time.Time `json:"created"`
	// Expires, when set, is when devices stop accepting the bundle.
	Expires *time.Time `json:"expires,omitempty"`
	// Devices, when set, lists the device ids the bundle is for.
	Devices []string `json:"devices,omitempty"`
	// Labels, when set, must all match the device's labels.
	Labels map[string]string `json:"labels,omitempty"`
	// KeyID is the id of the key that signed the manifest (PublicKey.ID);
	// empty for an unsigned bundle.
	KeyID string `json:"keyId,omitempty"`
	// Entries lists the payload, in the order it appears in the tar.
	Entries []Entry `json:"entries"`
}

// Entry is one payload file of a bundle.
type Entry struct {
	// Path is the file's path relative to the flow's directory, with
	// forward slashes, and no ".", ".." or empty elements.
	Path string `json:"path"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
	// SHA256 is the hex sha256 of the file's content.
	SHA256 string `json:"sha256"`
}

// TotalSize is the sum of the entries' sizes.
func (m *Manifest) TotalSize() int64 {
	var n int64
	for _, e := range m.Entries {
		n += e.Size
	}
	return n
}

// Encode returns the manifest as the bytes a bundle carries and a key signs.
func (m *Manifest) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// DecodeManifest decodes and checks manifest bytes against lim (zero fields
// take the defaults). Unknown keys, trailing data, an unknown format, a bad
// path, a duplicate, or an entry over a limit are refused with Integrity.
func DecodeManifest(data []byte, lim Limits) (*Manifest, error) {
	lim = lim.withDefaults()
	if int64(len(data)) > lim.MaxManifestBytes {
		return nil, refuse("%s is %d bytes, over the %d byte limit", ManifestName, len(data), lim.MaxManifestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, refuse("%s: %v", ManifestName, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, refuse("%s: data after the manifest object", ManifestName)
	}
	if err := m.check(lim); err != nil {
		return nil, err
	}
	return &m, nil
}

// check validates the manifest's shape and its limits.
func (m *Manifest) check(lim Limits) error {
	if m.Format != Format {
		return refuse("%s: format %d; this agent reads format %d", ManifestName, m.Format, Format)
	}
	if m.Flow == "" {
		return refuse("%s: no flow name", ManifestName)
	}
	if m.Version == 0 {
		return refuse("%s: version 0; release versions start at 1", ManifestName)
	}
	if m.KeyID != "" && !isHex(m.KeyID, 16) {
		return refuse("%s: keyId %q is not 16 hex digits", ManifestName, m.KeyID)
	}
	if len(m.Entries) > lim.MaxEntries {
		return refuse("%s: %d entries, over the limit of %d", ManifestName, len(m.Entries), lim.MaxEntries)
	}
	seen := make(map[string]bool, len(m.Entries))
	var total int64
	flowFile := false
	for i, e := range m.Entries {
		if err := checkPath(e.Path); err != nil {
			return refuse("%s: entry %d: %v", ManifestName, i+1, err)
		}
		if seen[e.Path] {
			return refuse("%s: entry %q is listed twice", ManifestName, e.Path)
		}
		seen[e.Path] = true
		if e.Size < 0 {
			return refuse("%s: entry %q has negative size %d", ManifestName, e.Path, e.Size)
		}
		if e.Size > lim.MaxEntryBytes {
			return refuse("%s: entry %q is %d bytes, over the %d byte limit", ManifestName, e.Path, e.Size, lim.MaxEntryBytes)
		}
		total += e.Size
		if total > lim.MaxTotalBytes {
			return refuse("%s: entries total more than the %d byte limit", ManifestName, lim.MaxTotalBytes)
		}
		if !isHex(e.SHA256, 64) {
			return refuse("%s: entry %q: sha256 %q is not 64 lowercase hex digits", ManifestName, e.Path, e.SHA256)
		}
		if e.Path == m.FlowFile {
			flowFile = true
		}
	}
	if !flowFile {
		return refuse("%s: flowFile %q is not one of the entries", ManifestName, m.FlowFile)
	}
	// A path may not be both a file and a directory of another entry.
	paths := make([]string, 0, len(m.Entries))
	for p := range seen {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for i := 0; i+1 < len(paths); i++ {
		if strings.HasPrefix(paths[i+1], paths[i]+"/") {
			return refuse("%s: entry %q is a file, but %q puts a directory there", ManifestName, paths[i], paths[i+1])
		}
	}
	for _, d := range m.Devices {
		if d == "" {
			return refuse("%s: an empty device id", ManifestName)
		}
	}
	return nil
}

// checkPath reports why p is not a safe payload path.
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is absolute", p)
	case strings.ContainsRune(p, '\\'):
		return fmt.Errorf("path %q contains a backslash", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("path %q contains a NUL byte", p)
	case !fs.ValidPath(p) || p == ".":
		return fmt.Errorf("path %q is outside the bundle root or not clean (no ., .. or empty elements)", p)
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// refuse returns an Integrity error with the formatted message.
func refuse(format string, args ...any) error {
	return onfailure.Errorf(onfailure.Integrity, format, args...)
}
