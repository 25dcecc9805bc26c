// Package onfailure is the failure vocabulary of edgeflow: the error kinds
// of spec section 5, the typed error that carries one, helpers that classify
// foreign errors at the boundary that understands them, and the pure
// decision of which failure strategy matches a failure and what follows.
//
// It imports the standard library only, so every other package can use it.
package onfailure

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Kind is the type of a step failure (spec 5). Kinds are strings because
// they are journaled and sent over the wire.
type Kind string

// The error kinds of spec 5.
const (
	Authentication    Kind = "Authentication"
	Authorization     Kind = "Authorization"
	Connectivity      Kind = "Connectivity"
	Timeout           Kind = "Timeout"
	Verification      Kind = "Verification"
	Integrity         Kind = "Integrity"
	ResourceExhausted Kind = "ResourceExhausted"
	UserMarkedFailure Kind = "UserMarkedFailure"
	AgentRestart      Kind = "AgentRestart"
	Unknown           Kind = "Unknown"

	// AllErrors matches every kind in a strategy's errors list. It is never
	// the kind of an error.
	AllErrors Kind = "AllErrors"
)

// Kinds lists every kind an error can have, in the order of the spec.
var Kinds = []Kind{
	Authentication, Authorization, Connectivity, Timeout, Verification,
	Integrity, ResourceExhausted, UserMarkedFailure, AgentRestart, Unknown,
}

// Valid reports whether k is a kind an error can have.
func (k Kind) Valid() bool {
	for _, v := range Kinds {
		if k == v {
			return true
		}
	}
	return false
}

// Error is a failure with its kind. Op says what was being done, such as
// "install /etc/app.conf"; Err is the cause.
type Error struct {
	Kind Kind
	Op   string
	Err  error
}

// E returns an *Error of kind k for operation op, wrapping err.
func E(k Kind, op string, err error) error {
	return &Error{Kind: k, Op: op, Err: err}
}

// Errorf returns an *Error of kind k whose cause is the formatted message.
func Errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Err: fmt.Errorf(format, args...)}
}

func (e *Error) Error() string {
	switch {
	case e.Op == "" && e.Err == nil:
		return string(e.Kind)
	case e.Op == "":
		return e.Err.Error()
	case e.Err == nil:
		return e.Op
	}
	return e.Op + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of err: the kind of the outermost *Error in its
// chain (joined errors included), else Timeout for a context deadline, else
// Classify's reading of the system error it wraps, else Unknown. A nil error
// has no kind ("").
func KindOf(err error) Kind {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e.Kind.Valid() {
		return e.Kind
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Timeout
	}
	return Classify(err)
}

// Classify maps a system error to a kind by its errno, never by its text:
// ENOSPC and friends are ResourceExhausted, EACCES and EPERM Authorization,
// connection failures Connectivity, ETIMEDOUT Timeout. Anything else is
// Unknown.
func Classify(err error) Kind {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENOSPC, syscall.EDQUOT, syscall.ENOMEM, syscall.EMFILE, syscall.ENFILE:
			return ResourceExhausted
		case syscall.EACCES, syscall.EPERM, syscall.EROFS:
			return Authorization
		case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
			syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EHOSTDOWN, syscall.EPIPE:
			return Connectivity
		case syscall.ETIMEDOUT:
			return Timeout
		}
	}
	if errors.Is(err, os.ErrPermission) {
		return Authorization
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return Timeout
	}
	return Unknown
}

// Wrap returns err as an *Error whose kind is KindOf(err), with op as
// context. A nil err stays nil.
func Wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindOf(err), Op: op, Err: err}
}
