package packaging

import (
	"bytes"
	"io"
	"os"
)

// IsBundle reports whether the file at path looks like a bundle (a
// gzip stream, or a tar archive with a POSIX/GNU header) rather than a
// flow document, by its first bytes. Whether it is a valid bundle is for
// Extract to say.
func IsBundle(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var head [512]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return false, err
	}
	return looksLikeBundle(head[:n]), nil
}

func looksLikeBundle(head []byte) bool {
	if len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b {
		return true
	}
	// The tar magic: "ustar\x00" (POSIX) or "ustar " (GNU) at offset 257.
	return len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar"))
}
