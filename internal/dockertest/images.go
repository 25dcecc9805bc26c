package dockertest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Repository is the repository of the cached test images.
const Repository = "edgeflow-test/app"

// Label is set (to "1") on every test image.
const Label = "edgeflow.test"

// VersionLabel is set on every test image to its Variant's Version, so that
// tests can tell an image's labels from a container's.
const VersionLabel = "edgeflow.test.version"

// Variant says what a test image runs: see testdata/images/app.
type Variant struct {
	// Version is served as the body of GET / ("v1" serves "v1\n").
	Version string
	// Mode is healthy, unhealthy or crash; empty is healthy.
	Mode string
	// HealthCheck adds a HEALTHCHECK running "/app -check" every second
	// (timeout 5s, so that a loaded CI machine does not fail it, 3 retries,
	// start period 1s).
	HealthCheck bool
}

var word = regexp.MustCompile(`^[A-Za-z0-9._-]*$`)

// dockerfile returns the Dockerfile of v, with extra instructions
// appended.
func (v Variant) dockerfile(extra ...string) (string, error) {
	if !word.MatchString(v.Version) || !word.MatchString(v.Mode) {
		return "", fmt.Errorf("variant %+v: version and mode may only hold letters, digits, '.', '_' and '-'", v)
	}
	mode := v.Mode
	if mode == "" {
		mode = "healthy"
	}
	lines := []string{
		"FROM scratch",
		"COPY app /app",
		`ENTRYPOINT ["/app"]`,
		"EXPOSE 8080",
		fmt.Sprintf("LABEL %s=1 %s=%q", Label, VersionLabel, v.Version),
		fmt.Sprintf("ENV VERSION=%q MODE=%q", v.Version, mode),
	}
	if v.HealthCheck {
		lines = append(lines, `HEALTHCHECK --interval=1s --timeout=5s --retries=3 --start-period=1s CMD ["/app","-check"]`)
	}
	lines = append(lines, extra...)
	return strings.Join(lines, "\n") + "\n", nil
}

// Image returns the tag of the cached test image of v, building it if no
// engine run has yet (see the package doc). Call Engine first.
func Image(t testing.TB, v Variant) string {
	t.Helper()
	df, err := v.dockerfile()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := appBinary()
	if err != nil {
		t.Fatalf("build the test app: %v", err)
	}
	h := sha256.New()
	h.Write(bin)
	h.Write([]byte{0})
	h.Write([]byte(df))
	tag := Repository + ":" + hex.EncodeToString(h.Sum(nil))[:12]

	e, _ := built.LoadOrStore(tag, &buildOnce{})
	b := e.(*buildOnce)
	b.once.Do(func() { b.err = buildCached(t, tag, df, bin) })
	if b.err != nil {
		t.Fatalf("build test image %s (%+v): %v", tag, v, b.err)
	}
	return tag
}

// FreshImage builds an image of v that no other test and no earlier run
// has: its id is new (a random label), so loading its archive really
// creates it. It is tagged edgeflow-test/fresh:<random>, and removed,
// with the containers that use it, when t ends. It returns the tag.
func FreshImage(t testing.TB, v Variant) string {
	t.Helper()
	nonce := randomHex(8)
	df, err := v.dockerfile(fmt.Sprintf("LABEL edgeflow.test.fresh=%s", nonce))
	if err != nil {
		t.Fatal(err)
	}
	bin, err := appBinary()
	if err != nil {
		t.Fatalf("build the test app: %v", err)
	}
	tag := "edgeflow-test/fresh:" + nonce
	t.Cleanup(func() { removeImageAndUsers(t, tag) })
	if err := build(t.TempDir(), tag, df, bin); err != nil {
		t.Fatalf("build fresh test image: %v", err)
	}
	return tag
}

// removeImageAndUsers removes the containers created from image ref, then
// every tag of it. Only for images private to one test.
func removeImageAndUsers(t testing.TB, ref string) {
	t.Helper()
	id, err := cli("image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		return // gone already (the test removed it, or never built it)
	}
	if users, err := cli("ps", "-aq", "--filter", "ancestor="+id); err == nil && users != "" {
		if _, err := cli(append([]string{"rm", "-f", "-v"}, strings.Fields(users)...)...); err != nil {
			t.Errorf("remove containers of test image %s: %v", ref, err)
		}
	}
	if _, err := cli("rmi", "-f", id); err != nil {
		t.Errorf("remove test image %s: %v", ref, err)
	}
}

type buildOnce struct {
	once sync.Once
	err  error
}

var built sync.Map // tag -> *buildOnce

// buildCached builds tag unless it exists, holding a file lock so that
// test processes running at once build it once.
func buildCached(t testing.TB, tag, dockerfile string, bin []byte) error {
	lockDir := filepath.Join(os.TempDir(), "edgeflow-dockertest")
	if err := os.MkdirAll(lockDir, 0o777); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(lockDir, strings.NewReplacer("/", "_", ":", "_").Replace(tag)+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	if _, err := cli("image", "inspect", "--format", "{{.Id}}", tag); err == nil {
		return nil
	}
	dir, err := os.MkdirTemp("", "edgeflow-dockertest-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	t.Logf("building test image %s", tag)
	return build(dir, tag, dockerfile, bin)
}

// build builds an image tagged tag in the empty directory dir.
func build(dir, tag, dockerfile string, bin []byte) error {
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "app"), bin, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("docker", "build", "--quiet", "--force-rm", "--tag", tag, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("docker build: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

var appBinary = sync.OnceValues(func() ([]byte, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "edgeflow-dockertest-app-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "app")
	goCmd := "go"
	if gr := os.Getenv("GOROOT"); gr != "" {
		if p := filepath.Join(gr, "bin", "go"); fileExists(p) {
			goCmd = p
		}
	}
	// -trimpath and -buildvcs=false make the binary, hence the image tag,
	// the same from run to run and commit to commit.
	cmd := exec.Command(goCmd, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, "./testdata/images/app")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./testdata/images/app: %w: %s", err, b)
	}
	return os.ReadFile(out)
})

// moduleRoot is the root of the edgeflow module, found from this file's
// place in it.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the dockertest package source")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if !fileExists(filepath.Join(root, "testdata", "images", "app", "main.go")) {
		return "", fmt.Errorf("testdata/images/app not found under %s", root)
	}
	return root, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// UniqueRef returns an image reference no other test uses,
// "edgeflow-test/<name>:<random>"; name is a lowercase word.
func UniqueRef(name string) string {
	return "edgeflow-test/" + name + ":" + randomHex(6)
}

// Tag tags image src as ref and removes the tag ref when t ends.
func Tag(t testing.TB, src, ref string) {
	t.Helper()
	Docker(t, "tag", src, ref)
	t.Cleanup(func() { RemoveImage(t, ref) })
}

// RemoveImage removes the image reference ref (the image too when it was
// its last tag). A reference that does not exist is no error.
func RemoveImage(t testing.TB, ref string) {
	t.Helper()
	if _, err := cli("image", "inspect", "--format", "{{.Id}}", ref); err != nil {
		return
	}
	if _, err := cli("rmi", ref); err != nil {
		t.Errorf("remove image %s: %v", ref, err)
	}
}

// Save writes the image ref to path as a docker save archive.
func Save(t testing.TB, ref, path string) {
	t.Helper()
	Docker(t, "save", "--output", path, ref)
}

// ImageID returns the id of the local image ref, failing t if there is
// none.
func ImageID(t testing.TB, ref string) string {
	t.Helper()
	return Docker(t, "image", "inspect", "--format", "{{.Id}}", ref)
}

// ImageExists reports whether the engine has image ref.
func ImageExists(ref string) bool {
	_, err := cli("image", "inspect", "--format", "{{.Id}}", ref)
	return err == nil
}
