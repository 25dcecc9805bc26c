package transport_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeflow/edgeflow/transport"
)

// FuzzDecode feeds arbitrary topics and payloads to Decode: it never
// panics, every refusal is a *DecodeError with a message, and whatever it
// accepts encodes again to a message that decodes to the same bytes.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("edgeflow/v1/devices/edge-berlin-042/events", data)
		f.Add("edgeflow/v1/devices/edge-berlin-042/commands", data)
	}
	f.Add("edgeflow/v1/devices/d/acks", []byte(`{"v":1,"id":"x","type":"ack","device":"d","time":"2025-01-01T00:00:00Z","body":{"seq":1}}`))
	f.Add("edgeflow/v1/devices/d/acks", []byte(`{"v":2}`))
	f.Add("x", []byte(`null`))
	var topics transport.Topics
	f.Fuzz(func(t *testing.T, topic string, data []byte) {
		m, err := topics.Decode(topic, data)
		if err != nil {
			var de *transport.DecodeError
			if !errors.As(err, &de) || err.Error() == "" || de.Err == nil {
				t.Fatalf("refusal %v (%T) is not a *DecodeError with a message", err, err)
			}
			if m != nil {
				t.Fatal("a message with an error")
			}
			return
		}
		first, err := m.Encode()
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		m2, err := topics.Decode(topic, first)
		if err != nil {
			t.Fatalf("re-encoded message refused: %v\n%s", err, first)
		}
		second, err := m2.Encode()
		if err != nil || string(second) != string(first) {
			t.Fatalf("encoding is not stable:\n%s\n%s\n%v", first, second, err)
		}
	})
}
