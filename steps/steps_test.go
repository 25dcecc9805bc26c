package steps

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

func TestLogBufferKeepsEverythingUnderCap(t *testing.T) {
	b := NewLogBuffer(100)
	b.Write([]byte("hello "))
	b.Write([]byte("world"))
	if got := b.String(); got != "hello world" {
		t.Fatalf("got %q", got)
	}
}

func TestLogBufferKeepsHeadAndTail(t *testing.T) {
	b := NewLogBuffer(20)
	var all bytes.Buffer
	for i := 0; i < 1000; i++ {
		line := []byte{byte('a' + i%26)}
		all.Write(line)
		b.Write(line)
	}
	got := b.String()
	src := all.String()
	if !strings.HasPrefix(got, src[:10]) {
		t.Errorf("head lost: %q", got)
	}
	if !strings.HasSuffix(got, src[len(src)-10:]) {
		t.Errorf("tail lost: %q (want suffix %q)", got, src[len(src)-10:])
	}
	if !strings.Contains(got, "[... 980 bytes dropped ...]") {
		t.Errorf("dropped marker wrong: %q", got)
	}
	if tail := b.Tail(5); tail != src[len(src)-5:] {
		t.Errorf("Tail(5) = %q", tail)
	}
}

func TestLogBufferOneBigWrite(t *testing.T) {
	b := NewLogBuffer(8)
	b.Write([]byte("0123456789ABCDEFGHIJ"))
	if got := b.String(); got != "0123\n[... 12 bytes dropped ...]\nGHIJ" {
		t.Fatalf("got %q", got)
	}
}

func TestLogBufferConcurrentWrites(t *testing.T) {
	b := NewLogBuffer(1 << 10)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				b.Write([]byte("xy"))
			}
		}()
	}
	wg.Wait()
	if got := len(b.Bytes()); got > 1<<10+40 {
		t.Fatalf("buffer grew past its cap: %d bytes", got)
	}
}
