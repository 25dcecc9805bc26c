package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// TestKindOf is the classification table: errdefs values as the SDK
// returns them for daemon statuses, the context's errors, local file
// errors, and progress-stream errors with and without a code.
func TestKindOf(t *testing.T) {
	enospc := &fs.PathError{Op: "open", Path: "/x.tar", Err: syscall.ENOSPC}
	cases := []struct {
		name     string
		err      error
		kind     onfailure.Kind
		notFound bool
	}{
		{"not found", cerrdefs.ErrNotFound.WithMessage("No such container: web"), onfailure.Unknown, true},
		{"unauthenticated", cerrdefs.ErrUnauthenticated.WithMessage("login refused"), onfailure.Authentication, false},
		{"permission denied", cerrdefs.ErrPermissionDenied, onfailure.Authorization, false},
		{"resource exhausted", cerrdefs.ErrResourceExhausted.WithMessage("toomanyrequests"), onfailure.ResourceExhausted, false},
		{"unavailable", cerrdefs.ErrUnavailable, onfailure.Connectivity, false},
		{"context deadline", fmt.Errorf("post: %w", context.DeadlineExceeded), onfailure.Timeout, false},
		{"internal", cerrdefs.ErrInternal.WithMessage("boom"), onfailure.Unknown, false},
		{"conflict", cerrdefs.ErrConflict, onfailure.Unknown, false},
		{"local ENOSPC", enospc, onfailure.ResourceExhausted, false},
		{"local EACCES", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, onfailure.Authorization, false},
		{"local missing file", &fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, onfailure.Unknown, false},
		{"connection refused errno", &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}, onfailure.Connectivity, false},
		{"stream 401", &streamError{msg: "unauthorized", errdef: cerrdefs.ErrUnauthenticated}, onfailure.Authentication, false},
		{"stream without code", &streamError{msg: "something broke"}, onfailure.Unknown, false},
		{"plain", errors.New("plain"), onfailure.Unknown, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := wrap(context.Background(), "do "+c.name, c.err)
			if got := onfailure.KindOf(err); got != c.kind {
				t.Errorf("kind = %s, want %s (%v)", got, c.kind, err)
			}
			var oe *onfailure.Error
			if !errors.As(err, &oe) {
				t.Fatalf("%v is not an *onfailure.Error", err)
			}
			if !strings.HasPrefix(err.Error(), "do "+c.name+": ") {
				t.Errorf("error %q does not start with its operation", err)
			}
			if got := errors.Is(err, containers.ErrNotFound); got != c.notFound {
				t.Errorf("errors.Is(ErrNotFound) = %v, want %v", got, c.notFound)
			}
			if !errors.Is(err, c.err) {
				t.Errorf("the cause is lost: %v", err)
			}
		})
	}
}

// TestWrapEndedContext checks that when the caller's context has ended the
// error carries its cause, whatever the SDK said.
func TestWrapEndedContext(t *testing.T) {
	marked := onfailure.Errorf(onfailure.UserMarkedFailure, "operator marked the step as failed")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(marked)
	err := wrap(ctx, "start container web", fmt.Errorf("post: %w", context.Canceled))
	if got := onfailure.KindOf(err); got != onfailure.UserMarkedFailure {
		t.Fatalf("kind = %s, want UserMarkedFailure (%v)", got, err)
	}
	if !errors.Is(err, marked) {
		t.Fatalf("cause lost: %v", err)
	}

	ctx, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()
	<-ctx.Done()
	if got := onfailure.KindOf(wrap(ctx, "pull x", errors.New("whatever"))); got != onfailure.Timeout {
		t.Fatalf("deadline: kind = %s, want Timeout", got)
	}
	if wrap(context.Background(), "op", nil) != nil {
		t.Fatal("wrap(nil) is not nil")
	}
}

// TestConsume checks the reading of a progress stream: progress only is
// success; an error line fails with its message and, with a code, its
// errdefs type; a broken stream is an error.
func TestConsume(t *testing.T) {
	ok := `{"status":"Loading layer","progressDetail":{"current":1,"total":2}}
{"stream":"Loaded image: example/app:1\n"}
`
	if err := consume(io.NopCloser(strings.NewReader(ok))); err != nil {
		t.Fatalf("progress only: %v", err)
	}
	withErr := `{"status":"Pulling fs layer"}
{"errorDetail":{"code":401,"message":"unauthorized: login refused"},"error":"unauthorized: login refused"}
{"status":"never read"}
`
	err := consume(io.NopCloser(strings.NewReader(withErr)))
	if err == nil || err.Error() != "unauthorized: login refused" {
		t.Fatalf("error line: got %v", err)
	}
	if !cerrdefs.IsUnauthorized(err) || kindOf(err) != onfailure.Authentication {
		t.Fatalf("error line with code 401 is not Unauthorized: %v", err)
	}
	oldStyle := `{"error":"archive/tar: invalid tar header"}`
	err = consume(io.NopCloser(strings.NewReader(oldStyle)))
	if err == nil || err.Error() != "archive/tar: invalid tar header" || kindOf(err) != onfailure.Unknown {
		t.Fatalf("error string only: got %v", err)
	}
	if err := consume(io.NopCloser(strings.NewReader(`{"status":`))); err == nil {
		t.Fatal("a truncated stream is no error")
	}
}
