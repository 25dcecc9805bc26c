package docker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"

	"github.com/containerd/errdefs/pkg/errhttp"
	"github.com/moby/moby/client"

	"github.com/edgeflow/edgeflow/onfailure"
)

// ImageID returns the id (sha256:...) of the local image ref, or an error
// wrapping containers.ErrNotFound.
func (c *Client) ImageID(ctx context.Context, ref string) (string, error) {
	img, err := c.api.ImageInspect(ctx, ref)
	if err != nil {
		return "", wrap(ctx, "inspect image "+ref, err)
	}
	return img.ID, nil
}

// LoadImage loads the image archive at path (docker save format; the
// daemon also takes it gzipped), streaming the file to the daemon, and
// reads the daemon's progress to its end: an error the daemon reports in
// it fails the load.
func (c *Client) LoadImage(ctx context.Context, path string) error {
	op := "load image archive " + path
	f, err := os.Open(path)
	if err != nil {
		return onfailure.Wrap(op, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return onfailure.Wrap(op, err)
	}
	if !fi.Mode().IsRegular() {
		return onfailure.Errorf(onfailure.Unknown, "%s: not a regular file (%s)", op, fi.Mode().Type())
	}
	resp, err := c.api.ImageLoad(ctx, f, client.ImageLoadWithQuiet(false))
	if err != nil {
		return wrap(ctx, op, err)
	}
	return wrap(ctx, op, consume(resp))
}

// PullImage pulls ref from its registry and reads the progress to its end.
func (c *Client) PullImage(ctx context.Context, ref string) error {
	op := "pull " + ref
	resp, err := c.api.ImagePull(ctx, ref, client.ImagePullOptions{})
	if err != nil {
		return wrap(ctx, op, err)
	}
	return wrap(ctx, op, consume(resp))
}

// TagImage points ref at the local image id.
func (c *Client) TagImage(ctx context.Context, id, ref string) error {
	_, err := c.api.ImageTag(ctx, client.ImageTagOptions{Source: id, Target: ref})
	return wrap(ctx, "tag image "+id+" as "+ref, err)
}

// message is one line of the daemon's JSON progress stream: only what
// tells a failure. Daemons write the error twice, as errorDetail and as
// the older error string.
type message struct {
	ErrorDetail *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errorDetail"`
	Error string `json:"error"`
}

// consume reads a progress stream to its end and closes it. It returns the
// first error the daemon reported in it, typed by its code when it has
// one, or the error that broke the stream.
func consume(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if m.ErrorDetail != nil || m.Error != "" {
			e := &streamError{msg: m.Error}
			if d := m.ErrorDetail; d != nil {
				if d.Message != "" {
					e.msg = d.Message
				}
				if d.Code != 0 {
					e.errdef = errhttp.ToNative(d.Code)
				}
			}
			// Drain the rest so the connection can be reused.
			_, _ = io.Copy(io.Discard, rc)
			return e
		}
	}
}

// streamError is an error the daemon reported inside a progress stream;
// with a code, it is the errdefs error of that code for errors.Is, so
// kindOf classifies it as it would the same status.
type streamError struct {
	msg    string
	errdef error
}

func (e *streamError) Error() string { return e.msg }

func (e *streamError) Is(target error) bool {
	return e.errdef != nil && errors.Is(e.errdef, target)
}
