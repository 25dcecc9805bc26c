package transport_test

import (
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/transport"
)

func TestTopicsRoundTrip(t *testing.T) {
	custom, err := transport.NewTopics("acme/fleet/edgeflow")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		topics transport.Topics
		prefix string
	}{{transport.Topics{}, "edgeflow/v1"}, {custom, "acme/fleet/edgeflow"}} {
		for _, c := range transport.Channels {
			topic, err := tc.topics.Topic("dev-1.berlin_ä", c)
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.prefix + "/devices/dev-1.berlin_ä/" + string(c); topic != want {
				t.Errorf("Topic = %q, want %q", topic, want)
			}
			dev, ch, err := tc.topics.Parse(topic)
			if err != nil || dev != "dev-1.berlin_ä" || ch != c {
				t.Errorf("Parse(%q) = %q, %q, %v", topic, dev, ch, err)
			}
		}
		if got, want := tc.topics.Filter(transport.ChannelEvents), tc.prefix+"/devices/+/events"; got != want {
			t.Errorf("Filter = %q, want %q", got, want)
		}
		if got, err := tc.topics.DeviceFilter("d"); err != nil || got != tc.prefix+"/devices/d/+" {
			t.Errorf("DeviceFilter = %q, %v", got, err)
		}
	}
	if got := (transport.Topics{}).Prefix(); got != transport.DefaultPrefix {
		t.Errorf("zero Topics prefix %q", got)
	}
}

func TestDeviceIDRefused(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"", "device id is empty"},
		{"a+b", `wildcard '+'`},
		{"a#", `wildcard '#'`},
		{"a/b", `contains "/"`},
		{"a\x00b", "NUL"},
		{"a\nb", "control character U+000A"},
		{"a\u0085", "control character U+0085"},
		{"\xff", "not valid UTF-8"},
		{strings.Repeat("x", 129), "129 bytes, over the 128-byte limit"},
	} {
		err := transport.CheckDeviceID(tc.id)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckDeviceID(%q) = %v, want %q", tc.id, err, tc.want)
		}
		if _, err := (transport.Topics{}).Topic(tc.id, transport.ChannelEvents); err == nil {
			t.Errorf("Topic(%q) built a topic", tc.id)
		}
	}
	if err := transport.CheckDeviceID(strings.Repeat("x", 128)); err != nil {
		t.Errorf("128 bytes refused: %v", err)
	}
}

func TestParseRefused(t *testing.T) {
	var tp transport.Topics
	for _, tc := range []struct{ topic, want string }{
		{"other/v1/devices/d/events", `is not under "edgeflow/v1/devices/"`},
		{"edgeflow/v1/devices/d", "has no channel"},
		{"edgeflow/v1/devices//events", "device id is empty"},
		{"edgeflow/v1/devices/+/events", "wildcard"},
		{"edgeflow/v1/devices/d/status", `unknown channel "status"`},
		{"edgeflow/v1/devices/d/events/x", `unknown channel "events/x"`},
		{"edgeflow/v2/devices/d/events", "is not under"},
	} {
		_, _, err := tp.Parse(tc.topic)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want %q", tc.topic, err, tc.want)
		}
	}
	if _, err := tp.Topic("d", "status"); err == nil {
		t.Error("Topic with an unknown channel")
	}
}

func TestPrefixRefused(t *testing.T) {
	for _, p := range []string{"/edgeflow", "edgeflow/", "a//b", "a/+/b", "a/#", "$SYS/x", "a\x00", "\xff"} {
		if _, err := transport.NewTopics(p); err == nil {
			t.Errorf("NewTopics(%q) accepted", p)
		}
	}
}
