package flow

import (
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Pos is a place in the flow document, 1-based.
type Pos struct {
	Line int
	Col  int
}

// Flow is a decoded and validated flow document (spec 1).
type Flow struct {
	Pos               Pos               `yaml:"-"`
	Version           int               `yaml:"version"`
	Name              string            `yaml:"name"`
	Description       string            `yaml:"description"`
	Timeout           time.Duration     `yaml:"timeout"`
	Vars              map[string]string `yaml:"vars"`
	FailureStrategies []Strategy        `yaml:"failureStrategies"`
	// StrategiesInput is set when the document says `failureStrategies:
	// input`: the flow-level strategies are given at deploy time
	// (docs/flows.md, "Failure strategies as runtime input"), and
	// FailureStrategies is empty until they are (see CheckGiven).
	StrategiesInput bool `yaml:"-"`
	// StrategiesInputPos is where the document says `input`.
	StrategiesInputPos Pos     `yaml:"-"`
	RollbackOnFailure  bool    `yaml:"rollbackOnFailure"`
	Rollback           []*Step `yaml:"rollback"`
	Steps              []Entry `yaml:"steps"`

	// File is the name the document was read from, used in messages.
	File string `yaml:"-"`
	// Dir is the directory relative paths resolve in (the flow's
	// directory, or the bundle's root).
	Dir string `yaml:"-"`
	// Source is the document as read, journaled as the flow as run.
	Source []byte `yaml:"-"`
}

// StrategiesInput is the value of a flow-level `failureStrategies` that
// leaves the flow's strategies to be given at deploy time.
const StrategiesInput = "input"

// Strategy is a failure strategy with its place in the document.
type Strategy struct {
	Pos                Pos `yaml:"-"`
	onfailure.Strategy `yaml:",inline"`
}

// Entry is one entry of a steps list: exactly one of Step, Group or
// Parallel is set.
type Entry struct {
	Pos      Pos
	Step     *Step
	Group    *Group
	Parallel []Entry
}

// When is a step's or group's condition (spec 4).
type When string

// The conditions of spec 4.
const (
	OnSuccess When = "onSuccess"
	OnFailure When = "onFailure"
	Always    When = "always"
)

// Group is a step group (spec 3).
type Group struct {
	Pos               Pos        `yaml:"-"`
	Name              string     `yaml:"name"`
	Parallel          bool       `yaml:"parallel"`
	When              When       `yaml:"when"`
	Steps             []Entry    `yaml:"steps"`
	FailureStrategies []Strategy `yaml:"failureStrategies"`
	Rollback          []*Step    `yaml:"rollback"`
}

// Step is one step (spec 2). Exactly one of the type fields is set.
type Step struct {
	Pos               Pos              `yaml:"-"`
	Name              string           `yaml:"name"`
	Timeout           time.Duration    `yaml:"timeout"`
	When              When             `yaml:"when"`
	FailureStrategies []Strategy       `yaml:"failureStrategies"`
	OnFailure         []RollbackAction `yaml:"onFailure"`

	File      *FileStep  `yaml:"file"`
	Script    *Script    `yaml:"script"`
	Verify    *Verify    `yaml:"verify"`
	Compose   *Compose   `yaml:"compose"`
	Container *Container `yaml:"container"`
	Reboot    *Reboot    `yaml:"reboot"`
}

// Step type names, as written in the document.
const (
	TypeFile      = "file"
	TypeScript    = "script"
	TypeVerify    = "verify"
	TypeCompose   = "compose"
	TypeContainer = "container"
	TypeReboot    = "reboot"
)

// Type returns the name of the step's type key, or "" if none is set.
func (s *Step) Type() string {
	switch {
	case s.File != nil:
		return TypeFile
	case s.Script != nil:
		return TypeScript
	case s.Verify != nil:
		return TypeVerify
	case s.Compose != nil:
		return TypeCompose
	case s.Container != nil:
		return TypeContainer
	case s.Reboot != nil:
		return TypeReboot
	}
	return ""
}

// FileStep is a file step: the files it installs. In the document it is a
// list of entries, or a single entry as a mapping.
type FileStep struct {
	Pos     Pos
	Entries []FileEntry
}

// FileEntry is one file a file step installs.
type FileEntry struct {
	Pos Pos `yaml:"-"`
	// Src is a path inside the flow's directory or bundle.
	Src string `yaml:"src"`
	// Content is inline content; variables are expanded in it.
	Content *string `yaml:"content"`
	// Dest is the absolute destination path.
	Dest string `yaml:"dest"`
	// Mode is the octal file mode, such as "0644". Empty keeps the mode of
	// the file being replaced, or 0644 for a new file.
	Mode string `yaml:"mode"`
	// Owner is "user", "user:group", or numeric "uid:gid". Empty keeps the
	// owner of the file being replaced, or the agent's for a new file.
	Owner string `yaml:"owner"`
	// SHA256 is the expected hex digest of the content, checked before
	// anything is written.
	SHA256 string `yaml:"sha256"`
}

// Script is a script step, or a script rollback action.
type Script struct {
	Pos     Pos               `yaml:"-"`
	Run     string            `yaml:"run"`
	Shell   string            `yaml:"shell"`
	Env     map[string]string `yaml:"env"`
	Workdir string            `yaml:"workdir"`
	Timeout time.Duration     `yaml:"timeout"`
	// ErrorTypes maps exit codes (as strings, such as "75") to error kinds.
	ErrorTypes map[string]onfailure.Kind `yaml:"errorTypes"`
}

// DefaultShell runs a script's text when Shell is empty.
const DefaultShell = "/bin/sh -c"

// Verify is a verify step: one probe, repeated every Interval until it
// passes or Timeout runs out.
type Verify struct {
	Pos      Pos           `yaml:"-"`
	HTTP     *HTTPProbe    `yaml:"http"`
	TCP      *TCPProbe     `yaml:"tcp"`
	Command  string        `yaml:"command"`
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
}

// Verify defaults.
const (
	DefaultVerifyInterval = 2 * time.Second
	DefaultVerifyTimeout  = 60 * time.Second
)

// HTTPProbe passes when a GET of URL answers ExpectStatus (default 200)
// and, if Body is set, the body contains it.
type HTTPProbe struct {
	Pos          Pos    `yaml:"-"`
	URL          string `yaml:"url"`
	ExpectStatus int    `yaml:"expectStatus"`
	Body         string `yaml:"body"`
}

// TCPProbe passes when a TCP connection to Address succeeds.
type TCPProbe struct {
	Pos     Pos    `yaml:"-"`
	Address string `yaml:"address"`
}

// Compose is a compose step (spec 2).
type Compose struct {
	Pos         Pos           `yaml:"-"`
	Project     string        `yaml:"project"`
	File        string        `yaml:"file"`
	Images      []string      `yaml:"images"`
	WaitHealthy time.Duration `yaml:"waitHealthy"`
}

// Container is a container step (spec 2).
type Container struct {
	Pos          Pos           `yaml:"-"`
	Name         string        `yaml:"name"`
	Image        string        `yaml:"image"`
	ImageArchive string        `yaml:"imageArchive"`
	WaitHealthy  time.Duration `yaml:"waitHealthy"`
}

// Reboot is a reboot step (spec 2). It has no keys of its own; write
// `reboot: {}`.
type Reboot struct {
	Pos Pos `yaml:"-"`
}

// RollbackAction is one entry of a step's onFailure list (spec 6).
type RollbackAction struct {
	Pos     Pos     `yaml:"-"`
	Action  string  `yaml:"action"`
	Trigger Trigger `yaml:"trigger"`
	Command string  `yaml:"command"`
	Script  *Script `yaml:"script"`
}

// Rollback action names (spec 6).
const (
	ActionCommand                  = "command"
	ActionScript                   = "script"
	ActionRevertFiles              = "revertFiles"
	ActionRevertComposeFile        = "revertComposeFile"
	ActionRestartPreviousContainer = "restartPreviousContainer"
)

// Trigger says when a rollback action runs (spec 6).
type Trigger string

// The triggers of spec 6.
const (
	ThisStep Trigger = "thisStep"
	AnyStep  Trigger = "anyStep"
)
