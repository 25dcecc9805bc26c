package docker

import (
	"context"
	"errors"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// wrap turns an error of the SDK into an *onfailure.Error for operation
// op, classified by kindOf. When ctx has ended, the error wraps
// context.Cause(ctx) instead: the caller's reason to stop is what matters.
// A nil err stays nil.
func wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return onfailure.Wrap(op, context.Cause(ctx))
	}
	if cerrdefs.IsNotFound(err) {
		err = notFound{err}
	}
	return onfailure.E(kindOf(err), op, err)
}

// kindOf classifies an error of the SDK or the daemon by its type, never
// by its text (see the table in the package doc).
func kindOf(err error) onfailure.Kind {
	switch {
	case errors.Is(err, context.DeadlineExceeded), cerrdefs.IsDeadlineExceeded(err):
		return onfailure.Timeout
	case client.IsErrConnectionFailed(err), cerrdefs.IsUnavailable(err):
		return onfailure.Connectivity
	case cerrdefs.IsUnauthorized(err):
		return onfailure.Authentication
	case cerrdefs.IsPermissionDenied(err):
		return onfailure.Authorization
	case cerrdefs.IsResourceExhausted(err):
		return onfailure.ResourceExhausted
	case cerrdefs.IsNotFound(err):
		return onfailure.Unknown
	}
	// A local error (opening an archive) or one already classified.
	return onfailure.KindOf(err)
}

// notFound marks an error about something that does not exist: it is
// containers.ErrNotFound for errors.Is, and reads as the daemon's message.
type notFound struct{ err error }

func (e notFound) Error() string { return e.err.Error() }
func (e notFound) Unwrap() error { return e.err }

func (e notFound) Is(target error) bool { return target == containers.ErrNotFound }
