package transport

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
)

// Version is the envelope version this package writes and reads. Within a
// version, changes are additive: new optional fields, which readers ignore.
// A new message type, a new value of a closed set (error kinds, statuses,
// actions) or any other change an old reader would refuse or misread
// makes a new version, with one exception: a message type gated by a
// capability. A command type an agent lists in presence
// capabilities.commands (CommandRollback) is sent only to agents that list
// it, and the events that answer it (rolled-back) only come from them, so
// no reader that does not know the type ever receives it.
const Version = 1

// MaxMessageSize is the largest encoded message, in bytes.
const MaxMessageSize = 64 << 10

// ErrNewerVersion is wrapped by the error of Decode for a message whose
// version is newer than Version.
var ErrNewerVersion = errors.New("newer message version")

// Type is a message type; it says which Body the envelope carries and on
// which Channel it travels.
type Type string

// Message types.
const (
	TypeDispatch       Type = "dispatch"
	TypeCancel         Type = "cancel"
	TypeGuide          Type = "guide"
	TypeMarkFailed     Type = "mark-failed"
	TypeRollback       Type = "rollback"
	TypeAccepted       Type = "accepted"
	TypeRejected       Type = "rejected"
	TypeQueued         Type = "queued"
	TypeStepStarted    Type = "step-started"
	TypeStepFinished   Type = "step-finished"
	TypeRollbackAction Type = "rollback-action"
	TypePaused         Type = "paused"
	TypeResumed        Type = "resumed"
	TypeFlowFinished   Type = "flow-finished"
	TypeRolledBack     Type = "rolled-back"
	TypeAck            Type = "ack"
	TypePresence       Type = "presence"
)

// Types lists every message type: commands, events, ack, presence.
var Types = []Type{
	TypeDispatch, TypeCancel, TypeGuide, TypeMarkFailed, TypeRollback,
	TypeAccepted, TypeRejected, TypeQueued, TypeStepStarted, TypeStepFinished,
	TypeRollbackAction, TypePaused, TypeResumed, TypeFlowFinished, TypeRolledBack,
	TypeAck, TypePresence,
}

var types = map[Type]struct {
	channel Channel
	body    func() Body
}{
	TypeDispatch:       {ChannelCommands, func() Body { return new(Dispatch) }},
	TypeCancel:         {ChannelCommands, func() Body { return new(Cancel) }},
	TypeGuide:          {ChannelCommands, func() Body { return new(Guide) }},
	TypeMarkFailed:     {ChannelCommands, func() Body { return new(MarkFailed) }},
	TypeRollback:       {ChannelCommands, func() Body { return new(Rollback) }},
	TypeAccepted:       {ChannelEvents, func() Body { return new(Accepted) }},
	TypeRejected:       {ChannelEvents, func() Body { return new(Rejected) }},
	TypeQueued:         {ChannelEvents, func() Body { return new(Queued) }},
	TypeStepStarted:    {ChannelEvents, func() Body { return new(StepStarted) }},
	TypeStepFinished:   {ChannelEvents, func() Body { return new(StepFinished) }},
	TypeRollbackAction: {ChannelEvents, func() Body { return new(RollbackAction) }},
	TypePaused:         {ChannelEvents, func() Body { return new(Paused) }},
	TypeResumed:        {ChannelEvents, func() Body { return new(Resumed) }},
	TypeFlowFinished:   {ChannelEvents, func() Body { return new(FlowFinished) }},
	TypeRolledBack:     {ChannelEvents, func() Body { return new(RolledBack) }},
	TypeAck:            {ChannelAcks, func() Body { return new(Ack) }},
	TypePresence:       {ChannelPresence, func() Body { return new(Presence) }},
}

// Valid reports whether t is one of Types.
func (t Type) Valid() bool { _, ok := types[t]; return ok }

// Channel returns the channel that messages of type t travel on ("" for an
// unknown type).
func (t Type) Channel() Channel { return types[t].channel }

// Event reports whether t is an event: sent on ChannelEvents, with a seq.
func (t Type) Event() bool { return t.Channel() == ChannelEvents }

// Message is one decoded envelope and its typed body.
type Message struct {
	// V is the envelope version, Version for messages this package builds.
	V int
	// ID is unique per message; receivers deduplicate dispatches and
	// commands by it.
	ID string
	// Type is the body's type.
	Type Type
	// Device is the device the message is for (commands, acks) or from
	// (events, presence). It must equal the device of the topic.
	Device string
	// Time is when the sender made the message.
	Time time.Time
	// Seq is the per-device sequence number of an event, from 1; the
	// agent's outbox sets it when it stores the event. Zero for other
	// types.
	Seq uint64
	// Body is a pointer to the body type of Type, such as *Dispatch.
	Body Body
}

// New returns a message for device with body, a fresh random id and the
// current time (UTC). An event's Seq is left zero for the outbox to set
// before Encode. New refuses an unsafe device id and a body that would not
// encode.
func New(device string, body Body) (*Message, error) {
	if body == nil || reflect.ValueOf(body).IsNil() {
		return nil, errors.New("new message: no body")
	}
	m := &Message{V: Version, ID: NewID(), Type: body.Type(), Device: device, Time: time.Now().UTC(), Body: body}
	if err := m.check(false); err != nil {
		return nil, fmt.Errorf("new %s message: %w", m.Type, err)
	}
	return m, nil
}

// NewID returns a random message id: 32 lowercase hex digits.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// envelope is the wire form of a Message.
type envelope struct {
	V      int             `json:"v"`
	ID     string          `json:"id"`
	Type   Type            `json:"type"`
	Device string          `json:"device"`
	Time   string          `json:"time"`
	Seq    uint64          `json:"seq,omitempty"`
	Body   json.RawMessage `json:"body"`
}

// Encode checks m as Decode would and returns its JSON form.
func (m *Message) Encode() ([]byte, error) {
	if err := m.check(true); err != nil {
		return nil, fmt.Errorf("encode %s message %s: %w", m.Type, m.ID, err)
	}
	body, err := json.Marshal(m.Body)
	if err != nil {
		return nil, fmt.Errorf("encode %s message %s: %w", m.Type, m.ID, err)
	}
	data, err := json.Marshal(envelope{
		V: m.V, ID: m.ID, Type: m.Type, Device: m.Device,
		Time: m.Time.Format(time.RFC3339Nano), Seq: m.Seq, Body: body,
	})
	if err != nil {
		return nil, fmt.Errorf("encode %s message %s: %w", m.Type, m.ID, err)
	}
	if len(data) > MaxMessageSize {
		return nil, fmt.Errorf("encode %s message %s: %d bytes, over the %d-byte cap", m.Type, m.ID, len(data), MaxMessageSize)
	}
	return data, nil
}

// check validates m; withSeq requires an event's seq.
func (m *Message) check(withSeq bool) error {
	switch {
	case m.V != Version:
		return fmt.Errorf("version %d: this package writes version %d", m.V, Version)
	case m.Body == nil || reflect.ValueOf(m.Body).IsNil():
		return errors.New("body: missing")
	case m.Body.Type() != m.Type:
		return fmt.Errorf("type %q does not match its %s body", m.Type, m.Body.Type())
	case m.Time.IsZero():
		return errors.New("time: missing")
	}
	if err := id("id", m.ID); err != nil {
		return err
	}
	if err := CheckDeviceID(m.Device); err != nil {
		return err
	}
	if err := m.checkSeq(withSeq); err != nil {
		return err
	}
	if err := m.Body.check(); err != nil {
		return fmt.Errorf("body.%w", err)
	}
	return nil
}

func (m *Message) checkSeq(required bool) error {
	if m.Type.Event() {
		if required && m.Seq == 0 {
			return fmt.Errorf("seq: missing (an event needs its sequence number, from 1)")
		}
		return nil
	}
	if m.Seq != 0 {
		return fmt.Errorf("seq %d: only events carry a sequence number, not %s", m.Seq, m.Type)
	}
	return nil
}

// DecodeError is why Decode refused a message. ID, Type, Device and Seq
// hold what could be read of the envelope before the refusal (zero when
// unread), so a controller can still acknowledge an event it refuses and
// an agent can log which message it dropped.
type DecodeError struct {
	ID     string
	Type   Type
	Device string
	Seq    uint64
	Err    error
}

func (e *DecodeError) Error() string {
	var b strings.Builder
	b.WriteString("message")
	if e.Type != "" {
		fmt.Fprintf(&b, " %s", e.Type)
	}
	if e.ID != "" {
		fmt.Fprintf(&b, " %s", e.ID)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

// Unwrap returns the cause.
func (e *DecodeError) Unwrap() error { return e.Err }

// Decode parses a message received on topic under t's prefix. On top of
// what DecodeMessage checks, the topic must be a device topic under the
// prefix, the envelope's device must be the topic's device, and the type
// must travel on the topic's channel. Every refusal is a *DecodeError.
func (t Topics) Decode(topic string, data []byte) (*Message, error) {
	device, ch, err := t.Parse(topic)
	if err != nil {
		return nil, &DecodeError{Err: err}
	}
	m, err := DecodeMessage(data)
	if err != nil {
		return nil, err
	}
	fail := func(err error) error {
		return &DecodeError{ID: m.ID, Type: m.Type, Device: m.Device, Seq: m.Seq, Err: err}
	}
	if m.Device != device {
		return nil, fail(fmt.Errorf("message for device %s on topic of device %s", m.Device, device))
	}
	if m.Type.Channel() != ch {
		return nil, fail(fmt.Errorf("%s message on the %s topic (it belongs on %s)", m.Type, ch, m.Type.Channel()))
	}
	return m, nil
}

// DecodeMessage parses and checks one message without its topic: at most
// MaxMessageSize bytes of one JSON object; envelope keys spelled exactly;
// version Version (a newer one is refused, wrapping ErrNewerVersion); a
// non-empty id; a known type; a safe device id; an RFC 3339 time; a seq
// from 1 on events and none on other types; and a body object with every
// required field valid. Unknown fields, in the envelope and in bodies, are
// ignored. Every refusal is a *DecodeError.
func DecodeMessage(data []byte) (*Message, error) {
	e := &DecodeError{}
	fail := func(format string, args ...any) (*Message, error) {
		e.Err = fmt.Errorf(format, args...)
		return nil, e
	}
	if len(data) > MaxMessageSize {
		return fail("%d bytes, over the %d-byte cap", len(data), MaxMessageSize)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return fail("not a JSON object: %v", err)
	}
	if fields == nil {
		return fail("not a JSON object: null")
	}
	get := func(key string, v any, required bool) error {
		raw, ok := fields[key]
		if !ok || bytes.Equal(raw, []byte("null")) {
			if required {
				return fmt.Errorf("%s: missing", key)
			}
			return nil
		}
		if err := json.Unmarshal(raw, v); err != nil {
			return fmt.Errorf("%s: %v", key, jsonError(err))
		}
		return nil
	}
	// Read what identifies the message first, so later refusals name it.
	if err := get("id", &e.ID, true); err != nil {
		return fail("%v", err)
	}
	var v int
	if err := get("v", &v, true); err != nil {
		return fail("%v", err)
	}
	if v > Version {
		return fail("version %d: %w; this reader understands version %d", v, ErrNewerVersion, Version)
	}
	if v != Version {
		return fail("version %d: want %d", v, Version)
	}
	if err := get("type", &e.Type, true); err != nil {
		return fail("%v", err)
	}
	if !e.Type.Valid() {
		t := e.Type
		e.Type = ""
		return fail("unknown type %q", t)
	}
	if err := get("device", &e.Device, true); err != nil {
		return fail("%v", err)
	}
	if _, ok := fields["seq"]; ok && !e.Type.Event() {
		return fail("seq: only events carry a sequence number, not %s", e.Type)
	}
	if err := get("seq", &e.Seq, false); err != nil {
		return fail("%v", err)
	}
	var ts string
	if err := get("time", &ts, true); err != nil {
		return fail("%v", err)
	}
	when, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return fail("time %q: want RFC 3339, such as 2025-01-02T15:04:05Z", ts)
	}
	raw, ok := fields["body"]
	if !ok || len(raw) == 0 || raw[0] != '{' {
		return fail("body: missing or not a JSON object")
	}
	body := types[e.Type].body()
	if err := exactKeys(raw, body); err != nil {
		return fail("body: %v", err)
	}
	if err := json.Unmarshal(raw, body); err != nil {
		return fail("body: %v", jsonError(err))
	}
	m := &Message{V: v, ID: e.ID, Type: e.Type, Device: e.Device, Time: when, Seq: e.Seq, Body: body}
	if err := m.check(true); err != nil {
		return fail("%v", err)
	}
	return m, nil
}

// exactKeys refuses a body key that differs from one of the body's field
// names only in case: encoding/json would accept it, other readers would
// not, so the sender has a bug worth hearing about.
func exactKeys(raw json.RawMessage, body Body) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return jsonError(err)
	}
	t := reflect.TypeOf(body).Elem()
	for k := range keys {
		for i := 0; i < t.NumField(); i++ {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			if k != tag && strings.EqualFold(k, tag) {
				return fmt.Errorf("field %q must be spelled %q", k, tag)
			}
		}
	}
	return nil
}

// jsonError shortens encoding/json's type errors to what a sender needs.
func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Errorf("%s: got a JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type))
		}
		return fmt.Errorf("got a JSON %s, want %s", te.Value, jsonKind(te.Type))
	}
	return err
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int64, reflect.Uint64:
		return "an integer"
	case reflect.Map, reflect.Struct, reflect.Pointer:
		return "an object"
	case reflect.Slice:
		return "an array"
	}
	return t.String()
}
