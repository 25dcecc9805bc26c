// Package transport is edgeflow's wire: the MQTT topics a controller and
// its device agents talk on, and the versioned JSON envelope and message
// bodies they exchange. docs/protocol.md describes the same protocol for
// other MQTT backends; the JSON Schemas in schemas/ (embedded as Schemas)
// describe every message, and the tests validate every message this
// package emits against them.
//
// This package is pure: it builds and parses topics, builds, encodes and
// decodes messages, and refuses anything malformed with an error that says
// what and where. It opens no connection and keeps no state. The MQTT
// client, the outbox that assigns event sequence numbers, and the
// deduplication of dispatches and commands by message id live elsewhere.
//
// A message's life:
//
//	sender:   New(device, body) → (events: the outbox sets Seq) → Encode
//	          → publish on Topics.Topic(device, m.Type.Channel())
//	receiver: Topics.Decode(topic, payload) → *Message with a typed Body,
//	          or a *DecodeError saying why it was refused
//
// Topics (under a prefix, "edgeflow/v1" by default):
//
//	PREFIX/devices/ID/commands   controller → agent: dispatch, cancel, guide, mark-failed
//	PREFIX/devices/ID/events     agent → controller: accepted ... flow-finished, with seq
//	PREFIX/devices/ID/acks       controller → agent: ack (cumulative, up to a seq)
//	PREFIX/devices/ID/presence   agent → everyone, retained: presence (the last will says offline)
package transport
