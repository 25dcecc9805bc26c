// Package dockertest is test support for code that talks to the Docker
// engine: it decides whether the engine is there (Engine), builds the test
// images from testdata/images/app (Image, FreshImage), gives every test its
// own names and removes what the test created (Prefix, Cleanup), and wraps
// the docker CLI for what tests need beside the code under test (Tag, Save,
// RemoveImage, IP, HTTPGet).
//
// Only steps/docker imports the Docker SDK; this package uses the docker
// CLI, and steps/docker's Client for Engine.
//
// # Availability
//
// Engine pings the daemon. When it does not answer, the test is skipped
// with a loud reason, unless EDGEFLOW_REQUIRE_SERVICES=1 (CI), where it
// fails.
//
// # Images
//
// The images are FROM scratch (no registry is needed) with the static app
// binary, built with the docker CLI's classic builder. Each is tagged
// edgeflow-test/app:<hash12>, where the hash covers the binary and the
// Dockerfile, and is kept between runs: a build is skipped when its tag
// exists. Builds are serialized across test processes with a file lock,
// so parallel packages never build the same image twice. These cached
// images are the only thing tests leave behind.
//
// # Parallel tests
//
// Tests of several packages run at once against the same engine. Every
// name a test gives a container, network, volume or image tag must start
// with its own Prefix, and cleanup only ever removes objects under the
// prefixes it is given, never by broader filters.
package dockertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/steps/docker"
)

// RequireEnv is the environment variable that turns a missing engine into
// a test failure instead of a skip.
const RequireEnv = "EDGEFLOW_REQUIRE_SERVICES"

// Engine returns a client of the Docker engine, closed when t ends. When
// the engine does not answer, it skips t, or fails it if RequireEnv is 1.
func Engine(t testing.TB) *docker.Client {
	t.Helper()
	c, err := docker.New()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.Ping(ctx)
		cancel()
		if err != nil {
			c.Close()
		}
	}
	if err == nil {
		if _, lerr := exec.LookPath("docker"); lerr != nil {
			c.Close()
			err = fmt.Errorf("the docker CLI is needed to build test images: %w", lerr)
		}
	}
	if err != nil {
		Unavailable(t, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Unavailable ends t because the Docker engine is not usable: a skip with
// a loud reason, or a failure when RequireEnv is 1.
func Unavailable(t testing.TB, why error) {
	t.Helper()
	msg := fmt.Sprintf("DOCKER ENGINE NOT AVAILABLE, SKIPPING %s: %v (set %s=1 to make this a failure)", t.Name(), why, RequireEnv)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but the Docker engine is not available: %v", RequireEnv, why)
	}
	t.Skip(msg)
}

// Prefix returns a name prefix private to t ("eft-<test>-<random>-") and
// registers Cleanup for it: every container, network and volume whose name
// starts with it is removed when t ends. Name what the test creates
// Prefix(t)+"web" and so on.
func Prefix(t testing.TB) string {
	t.Helper()
	p := "eft-" + slug(t.Name()) + "-" + randomHex(4) + "-"
	Cleanup(t, p)
	return p
}

var notSlug = regexp.MustCompile(`[^a-z0-9]+`)

// slug makes a test name usable in a container name, short.
func slug(name string) string {
	s := notSlug.ReplaceAllString(strings.ToLower(name), "-")
	s = strings.Trim(s, "-")
	if len(s) > 24 {
		s = strings.Trim(s[len(s)-24:], "-")
	}
	if s == "" {
		s = "t"
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Cleanup registers, for when t ends, the forced removal of every
// container (with its anonymous volumes), then every network and volume,
// whose name starts with one of prefixes. Empty prefixes are refused, so
// that cleanup never removes another test's objects.
func Cleanup(t testing.TB, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		if len(p) < 4 {
			t.Fatalf("dockertest.Cleanup: prefix %q is too short to be private to a test", p)
		}
	}
	t.Cleanup(func() {
		for _, p := range prefixes {
			RemoveAll(t, p)
		}
	})
}

// RemoveAll removes now every container, network and volume whose name
// starts with prefix. Failures are reported with t.Errorf.
func RemoveAll(t testing.TB, prefix string) {
	t.Helper()
	if len(prefix) < 4 {
		t.Fatalf("dockertest.RemoveAll: prefix %q is too short to be private to a test", prefix)
	}
	if ids := names(t, prefix, "ps", "-a", "--format", "{{.Names}}", "--filter", "name="+prefix); len(ids) > 0 {
		if _, err := cli(append([]string{"rm", "-f", "-v"}, ids...)...); err != nil {
			t.Errorf("remove test containers %v: %v", ids, err)
		}
	}
	if ids := names(t, prefix, "network", "ls", "--format", "{{.Name}}", "--filter", "name="+prefix); len(ids) > 0 {
		if _, err := cli(append([]string{"network", "rm"}, ids...)...); err != nil {
			t.Errorf("remove test networks %v: %v", ids, err)
		}
	}
	if ids := names(t, prefix, "volume", "ls", "--format", "{{.Name}}", "--filter", "name="+prefix); len(ids) > 0 {
		if _, err := cli(append([]string{"volume", "rm", "-f"}, ids...)...); err != nil {
			t.Errorf("remove test volumes %v: %v", ids, err)
		}
	}
}

// names runs a docker listing and keeps the names that start with prefix
// (the CLI's name filter matches substrings).
func names(t testing.TB, prefix string, args ...string) []string {
	t.Helper()
	out, err := cli(args...)
	if err != nil {
		t.Errorf("docker %s: %v", strings.Join(args, " "), err)
		return nil
	}
	var keep []string
	for _, n := range strings.Fields(out) {
		if strings.HasPrefix(n, prefix) {
			keep = append(keep, n)
		}
	}
	return keep
}

// cli runs the docker CLI and returns its standard output, trimmed; a
// failure's error includes the standard error.
func cli(args ...string) (string, error) {
	cmd := exec.Command("docker", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(bytes.TrimSpace(stdout.Bytes())), nil
}

// Docker runs the docker CLI with args and returns its standard output,
// trimmed, failing t if it fails.
func Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := cli(args...)
	if err != nil {
		t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return out
}
