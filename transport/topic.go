package transport

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// DefaultPrefix is the topic prefix used when none is configured.
const DefaultPrefix = "edgeflow/v1"

// MaxDeviceIDLen is the longest device id, in bytes.
const MaxDeviceIDLen = 128

// Channel is the last level of a device's topic: which way a message goes
// and what it may be.
type Channel string

// The channels of a device's subtree.
const (
	// ChannelCommands carries controller → agent messages: dispatch, cancel,
	// guide, mark-failed.
	ChannelCommands Channel = "commands"
	// ChannelEvents carries agent → controller reports, each with a seq.
	ChannelEvents Channel = "events"
	// ChannelAcks carries controller → agent acknowledgements of events.
	ChannelAcks Channel = "acks"
	// ChannelPresence carries the agent's retained presence message and its
	// last will.
	ChannelPresence Channel = "presence"
)

// Channels lists every channel.
var Channels = []Channel{ChannelCommands, ChannelEvents, ChannelAcks, ChannelPresence}

// Valid reports whether c is one of Channels.
func (c Channel) Valid() bool { return slices.Contains(Channels, c) }

// Topics builds and parses topics under one prefix. The zero value uses
// DefaultPrefix.
type Topics struct {
	prefix string
}

// NewTopics returns Topics under prefix; an empty prefix means
// DefaultPrefix. A prefix is one or more non-empty topic levels separated
// by "/", without wildcards ("+", "#"), NUL or control characters, not
// starting with "$" (reserved by brokers) and without a leading or trailing
// "/".
func NewTopics(prefix string) (Topics, error) {
	if prefix == "" {
		return Topics{}, nil
	}
	if !utf8.ValidString(prefix) {
		return Topics{}, fmt.Errorf("topic prefix %q is not valid UTF-8", prefix)
	}
	if strings.HasPrefix(prefix, "$") {
		return Topics{}, fmt.Errorf("topic prefix %q starts with \"$\", which brokers reserve", prefix)
	}
	if len(prefix) > 1024 {
		return Topics{}, fmt.Errorf("topic prefix is %d bytes, over the 1024-byte limit", len(prefix))
	}
	for i, level := range strings.Split(prefix, "/") {
		if level == "" {
			return Topics{}, fmt.Errorf("topic prefix %q has an empty level (level %d)", prefix, i+1)
		}
		if err := checkLevel(level); err != nil {
			return Topics{}, fmt.Errorf("topic prefix %q: %w", prefix, err)
		}
	}
	return Topics{prefix: prefix}, nil
}

// Prefix returns the prefix in use.
func (t Topics) Prefix() string {
	if t.prefix == "" {
		return DefaultPrefix
	}
	return t.prefix
}

// Topic returns the topic of device's channel c, such as
// "edgeflow/v1/devices/dev-1/events".
func (t Topics) Topic(device string, c Channel) (string, error) {
	if err := CheckDeviceID(device); err != nil {
		return "", err
	}
	if !c.Valid() {
		return "", fmt.Errorf("unknown channel %q (want one of commands, events, acks, presence)", c)
	}
	return t.Prefix() + "/devices/" + device + "/" + string(c), nil
}

// Filter returns the subscription filter for channel c of every device,
// such as "edgeflow/v1/devices/+/events" (what a controller subscribes to).
func (t Topics) Filter(c Channel) string {
	return t.Prefix() + "/devices/+/" + string(c)
}

// DeviceFilter returns the subscription filter for every channel of one
// device, "PREFIX/devices/ID/+". An agent subscribes to its commands and
// acks topics one by one instead, since it must not read its own events.
func (t Topics) DeviceFilter(device string) (string, error) {
	if err := CheckDeviceID(device); err != nil {
		return "", err
	}
	return t.Prefix() + "/devices/" + device + "/+", nil
}

// Parse splits a topic under t's prefix into its device id and channel. It
// refuses a topic under another prefix, a malformed one, an unsafe device
// id and an unknown channel.
func (t Topics) Parse(topic string) (device string, c Channel, err error) {
	base := t.Prefix() + "/devices/"
	rest, ok := strings.CutPrefix(topic, base)
	if !ok {
		return "", "", fmt.Errorf("topic %q is not under %q", topic, base)
	}
	device, ch, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", fmt.Errorf("topic %q has no channel after the device id", topic)
	}
	if err := CheckDeviceID(device); err != nil {
		return "", "", fmt.Errorf("topic %q: %w", topic, err)
	}
	c = Channel(ch)
	if !c.Valid() {
		return "", "", fmt.Errorf("topic %q: unknown channel %q (want one of commands, events, acks, presence)", topic, ch)
	}
	return device, c, nil
}

// CheckDeviceID returns an error unless id is usable as one topic level:
// 1 to MaxDeviceIDLen bytes of valid UTF-8 without "/", the wildcards "+"
// and "#", NUL or other control characters. An agent refuses to start with
// such an id, and a topic or envelope naming one is refused.
func CheckDeviceID(id string) error {
	if id == "" {
		return errors.New("device id is empty")
	}
	if len(id) > MaxDeviceIDLen {
		return fmt.Errorf("device id %.32q... is %d bytes, over the %d-byte limit", id, len(id), MaxDeviceIDLen)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("device id %q is not valid UTF-8", id)
	}
	if err := checkLevel(id); err != nil {
		return fmt.Errorf("device id %q: %w", id, err)
	}
	return nil
}

// checkLevel refuses what may not appear in one topic level.
func checkLevel(s string) error {
	for i, r := range s {
		switch {
		case r == '/':
			return fmt.Errorf("contains \"/\" at byte %d (a topic level separator)", i)
		case r == '+' || r == '#':
			return fmt.Errorf("contains the MQTT wildcard %q at byte %d", r, i)
		case r == 0:
			return fmt.Errorf("contains NUL at byte %d", i)
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return fmt.Errorf("contains the control character %U at byte %d", r, i)
		}
	}
	return nil
}
