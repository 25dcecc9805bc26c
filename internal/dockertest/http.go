package dockertest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// HTTPPatience bounds how long HTTPGet polls.
const HTTPPatience = 30 * time.Second

// Run starts a container from image named name with the docker CLI
// (extra arguments, such as "-e", "K=V" or "--restart", "always", come
// before the image) and returns its id. Name it under the test's Prefix.
func Run(t testing.TB, name, image string, extra ...string) string {
	t.Helper()
	args := append([]string{"run", "-d", "--name", name}, extra...)
	return Docker(t, append(args, image)...)
}

// IP returns the address of container nameOrID on its first network with
// one (the bridge by default).
func IP(t testing.TB, nameOrID string) string {
	t.Helper()
	ip := Docker(t, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", nameOrID)
	f := strings.Fields(ip)
	if len(f) == 0 {
		t.Fatalf("container %s has no IP address", nameOrID)
	}
	return f[0]
}

// httpClient opens a new connection for every request: containers come
// and go, and their addresses are reused.
var httpClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// Get makes one GET of url and returns the status and body.
func Get(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// HTTPGet polls url until it answers 200, for up to HTTPPatience, and
// returns the body; it fails t if it never does.
func HTTPGet(t testing.TB, url string) string {
	t.Helper()
	deadline := time.Now().Add(HTTPPatience)
	var last string
	for {
		code, body, err := Get(context.Background(), url)
		if err == nil && code == http.StatusOK {
			return body
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("status %d: %s", code, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: no 200 within %s; last: %s", url, HTTPPatience, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// AppURL is the URL of the test app in container nameOrID, on its bridge
// address: AppURL(t, c, "/health").
func AppURL(t testing.TB, nameOrID, path string) string {
	t.Helper()
	return "http://" + IP(t, nameOrID) + ":8080" + path
}
