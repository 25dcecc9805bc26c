package packaging

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Key file headers: each key file is one line, the header, a space, and the
// key in standard base64 (the 32-byte seed for a private key, the 32-byte
// public key for a public one). A public key file may carry a comment after
// the key.
const (
	PrivateKeyHeader = "edgeflow-ed25519-private"
	PublicKeyHeader  = "edgeflow-ed25519-public"
)

// PublicKey is an Ed25519 public key that may sign bundles.
type PublicKey ed25519.PublicKey

// PrivateKey is an Ed25519 private key that signs bundles. Keep it offline.
type PrivateKey ed25519.PrivateKey

// ID returns the key's short id: the first 8 bytes of sha256 of the public
// key, in hex. Manifests name their signing key by it.
func (k PublicKey) ID() string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// Public returns the public half of k.
func (k PrivateKey) Public() PublicKey {
	return PublicKey(ed25519.PrivateKey(k).Public().(ed25519.PublicKey))
}

// ID returns the id of k's public key.
func (k PrivateKey) ID() string { return k.Public().ID() }

// GenerateKey returns a new signing key pair.
func GenerateKey() (PrivateKey, PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	return PrivateKey(priv), PublicKey(pub), nil
}

// WriteKeyFiles writes priv to PREFIX.key (mode 0600) and its public key to
// PREFIX.pub (mode 0644). It refuses to overwrite either file. It returns
// the two paths.
func WriteKeyFiles(prefix string, priv PrivateKey) (keyPath, pubPath string, err error) {
	keyPath, pubPath = prefix+".key", prefix+".pub"
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("write key: %s already exists; not overwriting it", p)
		}
	}
	seed := ed25519.PrivateKey(priv).Seed()
	line := PrivateKeyHeader + " " + base64.StdEncoding.EncodeToString(seed) + "\n"
	if err := writeNew(keyPath, line, 0o600); err != nil {
		return "", "", err
	}
	pub := priv.Public()
	line = PublicKeyHeader + " " + base64.StdEncoding.EncodeToString(pub) + " keyid=" + pub.ID() + "\n"
	if err := writeNew(pubPath, line, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return "", "", err
	}
	return keyPath, pubPath, nil
}

func writeNew(path, content string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return nil
}

// maxKeyFile bounds a key file; real ones are under 100 bytes.
const maxKeyFile = 4096

func readKeyFile(path, header string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("read key %s: not a regular file", path)
	}
	if st.Size() > maxKeyFile {
		return nil, fmt.Errorf("read key %s: %d bytes is too large for a key file", path, st.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 || fields[0] != header {
		return nil, fmt.Errorf("read key %s: not an edgeflow key file (want a line %q)", path, header+" BASE64")
	}
	raw, err := base64.StdEncoding.DecodeString(fields[1])
	if err != nil {
		return nil, fmt.Errorf("read key %s: bad base64: %w", path, err)
	}
	return raw, nil
}

// LoadPrivateKey reads a private key file written by WriteKeyFiles. It
// refuses a file that group or others may read, as ssh does.
func LoadPrivateKey(path string) (PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("read key %s: mode %04o lets others read the private key; chmod 600 it", path, st.Mode().Perm())
	}
	seed, err := readKeyFile(path, PrivateKeyHeader)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, err
		}
		if _, e2 := readKeyFile(path, PublicKeyHeader); e2 == nil {
			return nil, fmt.Errorf("read key %s: this is a public key; signing needs the private key (PREFIX.key)", path)
		}
		return nil, err
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("read key %s: private key is %d bytes, want %d", path, len(seed), ed25519.SeedSize)
	}
	return PrivateKey(ed25519.NewKeyFromSeed(seed)), nil
}

// LoadPublicKey reads a public key file written by WriteKeyFiles.
func LoadPublicKey(path string) (PublicKey, error) {
	raw, err := readKeyFile(path, PublicKeyHeader)
	if err != nil {
		if _, e2 := readKeyFile(path, PrivateKeyHeader); e2 == nil {
			return nil, fmt.Errorf("read key %s: this is a private key; give the public key (PREFIX.pub) and keep the private one offline", path)
		}
		return nil, err
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("read key %s: public key is %d bytes, want %d", path, len(raw), ed25519.PublicKeySize)
	}
	return PublicKey(raw), nil
}
