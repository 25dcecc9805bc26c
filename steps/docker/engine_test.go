package docker_test

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/dockertest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps/containers"
	"github.com/edgeflow/edgeflow/steps/docker"
)

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// parallelOnEngine marks t parallel and returns the engine, a context and
// a name prefix private to t for what it creates.
func parallelOnEngine(t *testing.T) (*docker.Client, context.Context, string) {
	t.Helper()
	t.Parallel()
	return dockertest.Engine(t), ctx(t), dockertest.Prefix(t)
}

// TestPingNegotiates checks that Ping reaches the engine and settles on an
// API version the engine speaks (at most 1.41 on a Docker 20.10 engine).
func TestPingNegotiates(t *testing.T) {
	t.Parallel()
	e := dockertest.Engine(t)
	if err := e.Ping(ctx(t)); err != nil {
		t.Fatal(err)
	}
	server := dockertest.Docker(t, "version", "--format", "{{.Server.APIVersion}}")
	if got := e.APIVersion(); got != server && !versionLess(got, server) {
		t.Fatalf("negotiated API version %s, the engine speaks %s", got, server)
	}
}

// versionLess compares "1.41"-style versions.
func versionLess(a, b string) bool {
	var am, an, bm, bn int
	_, _ = fmtSscanf(a, &am, &an)
	_, _ = fmtSscanf(b, &bm, &bn)
	return am < bm || (am == bm && an < bn)
}

// TestConnectivity checks that an engine nobody listens for is a
// Connectivity error: a socket path that does not exist, and a socket
// that exists with no listener.
func TestConnectivity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dead := filepath.Join(dir, "dead.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: dead, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, host := range []string{"unix://" + dead, "unix://" + filepath.Join(dir, "missing.sock")} {
		c, err := docker.New(docker.WithHost(host))
		if err != nil {
			t.Fatal(err)
		}
		err = c.Ping(ctx(t))
		c.Close()
		if got := onfailure.KindOf(err); got != onfailure.Connectivity {
			t.Errorf("%s: kind %s, want Connectivity (%v)", host, got, err)
		}
		var oe *onfailure.Error
		if !errors.As(err, &oe) {
			t.Errorf("%s: %v is not an *onfailure.Error", host, err)
		}
	}
}

// TestEndedContext checks that a call under a context that has run out is
// a Timeout, and one cancelled with a cause carries that cause.
func TestEndedContext(t *testing.T) {
	t.Parallel()
	e := dockertest.Engine(t)
	c, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-c.Done()
	if got := onfailure.KindOf(e.Ping(c)); got != onfailure.Timeout {
		t.Fatalf("deadline: kind %s, want Timeout", got)
	}
	marked := onfailure.Errorf(onfailure.UserMarkedFailure, "marked as failed")
	c2, cancel2 := context.WithCancelCause(context.Background())
	cancel2(marked)
	if _, err := e.Inspect(c2, "anything"); !errors.Is(err, marked) {
		t.Fatalf("cancel cause lost: %v", err)
	}
}

// TestNotFound checks that naming a container or image that does not
// exist gives an error wrapping containers.ErrNotFound, naming it; and
// that Remove of a missing container is no error.
func TestNotFound(t *testing.T) {
	t.Parallel()
	e := dockertest.Engine(t)
	name := dockertest.Prefix(t) + "nobody"
	c := ctx(t)
	_, err := e.Inspect(c, name)
	checkNotFound(t, "Inspect", err, name)
	_, err = e.ImageID(c, "edgeflow-test/nothing:none")
	checkNotFound(t, "ImageID", err, "edgeflow-test/nothing:none")
	checkNotFound(t, "Start", e.Start(c, name), name)
	checkNotFound(t, "Stop", e.Stop(c, name, time.Second), name)
	checkNotFound(t, "Rename", e.Rename(c, name, name+"2"), name)
	_, err = e.Clone(c, name, name+"2", "edgeflow-test/nothing:none")
	checkNotFound(t, "Clone", err, name)
	checkNotFound(t, "SetRestartPolicy", e.SetRestartPolicy(c, name, containers.RestartPolicy{Name: "no"}), name)
	if err := e.Remove(c, name); err != nil {
		t.Errorf("Remove of a missing container: %v", err)
	}
	err = e.LoadImage(c, filepath.Join(t.TempDir(), "missing.tar"))
	if err == nil || !strings.Contains(err.Error(), "missing.tar") {
		t.Errorf("LoadImage of a missing file: %v", err)
	}
}

func checkNotFound(t *testing.T, what string, err error, name string) {
	t.Helper()
	if !errors.Is(err, containers.ErrNotFound) {
		t.Errorf("%s: %v does not wrap ErrNotFound", what, err)
		return
	}
	if !strings.Contains(err.Error(), name) {
		t.Errorf("%s: %q does not name %s", what, err, name)
	}
	if k := onfailure.KindOf(err); k != onfailure.Unknown {
		t.Errorf("%s: kind %s, want Unknown", what, k)
	}
}

// TestLoadImage checks LoadImage with archives from docker save, plain and
// gzipped, of an image the engine did not have: afterwards ImageID finds
// it with the same id. A file that is no archive fails.
func TestLoadImage(t *testing.T) {
	t.Parallel()
	e := dockertest.Engine(t)
	c := ctx(t)
	ref := dockertest.FreshImage(t, dockertest.Variant{Version: "load"})
	id := dockertest.ImageID(t, ref)
	dir := t.TempDir()
	plain := filepath.Join(dir, "image.tar")
	dockertest.Save(t, ref, plain)
	gz := filepath.Join(dir, "image.tar.gz")
	gzipFile(t, plain, gz)

	for _, archive := range []string{plain, gz} {
		dockertest.Docker(t, "rmi", ref)
		if _, err := e.ImageID(c, ref); !errors.Is(err, containers.ErrNotFound) {
			t.Fatalf("image still there after rmi: %v", err)
		}
		if err := e.LoadImage(c, archive); err != nil {
			t.Fatalf("load %s: %v", filepath.Base(archive), err)
		}
		got, err := e.ImageID(c, ref)
		if err != nil {
			t.Fatalf("after loading %s: %v", filepath.Base(archive), err)
		}
		if got != id {
			t.Fatalf("loaded id %s, saved %s", got, id)
		}
	}

	junk := filepath.Join(dir, "junk.tar")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a tar archive\n", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	err := e.LoadImage(c, junk)
	if err == nil {
		t.Fatal("loading junk succeeded")
	}
	var oe *onfailure.Error
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "junk.tar") {
		t.Fatalf("junk: %v is not an *onfailure.Error naming the file", err)
	}
}

func gzipFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(out)
	if _, err := io.Copy(zw, in); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestImageIDAndTag checks ImageID against the CLI, and that TagImage
// points a new reference at an id.
func TestImageIDAndTag(t *testing.T) {
	t.Parallel()
	e := dockertest.Engine(t)
	c := ctx(t)
	img := dockertest.Image(t, dockertest.Variant{Version: "v1", HealthCheck: true})
	id, err := e.ImageID(c, img)
	if err != nil {
		t.Fatal(err)
	}
	if want := dockertest.ImageID(t, img); id != want || !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("ImageID = %s, want %s", id, want)
	}
	ref := dockertest.UniqueRef("tagged")
	t.Cleanup(func() { dockertest.RemoveImage(t, ref) })
	if err := e.TagImage(c, id, ref); err != nil {
		t.Fatal(err)
	}
	if got, err := e.ImageID(c, ref); err != nil || got != id {
		t.Fatalf("ImageID(%s) = %s, %v; want %s", ref, got, err, id)
	}
}

// TestPullUnreachableRegistry checks that a pull from a registry nobody
// serves fails with an *onfailure.Error naming the reference. (Docker
// 20.10 reports a registry it cannot dial as an internal error, so the
// kind depends on the engine; see the package doc.)
func TestPullUnreachableRegistry(t *testing.T) {
	t.Parallel()
	e := dockertest.Engine(t)
	err := e.PullImage(ctx(t), "127.0.0.1:1/edgeflow/nothing:1")
	var oe *onfailure.Error
	if !errors.As(err, &oe) || !oe.Kind.Valid() {
		t.Fatalf("pull: %v is not a classified error", err)
	}
	if !strings.Contains(err.Error(), "pull 127.0.0.1:1/edgeflow/nothing:1") {
		t.Fatalf("pull error %q does not name the reference", err)
	}
}

// TestLifecycleIdempotent checks Rename, Start, Stop and Remove, each done
// twice: the second time is no error, as containers.Engine promises.
func TestLifecycleIdempotent(t *testing.T) {
	e, c, p := parallelOnEngine(t)
	img := dockertest.Image(t, dockertest.Variant{Version: "v1"})
	id := dockertest.Docker(t, "create", "--name", p+"a", img)

	for range 2 {
		if err := e.Rename(c, id, p+"b"); err != nil {
			t.Fatalf("rename: %v", err)
		}
	}
	ct, err := e.Inspect(c, p+"b")
	if err != nil || ct.ID != id || ct.Name != p+"b" || ct.Status != "created" {
		t.Fatalf("after rename: %+v, %v", ct, err)
	}
	for range 2 {
		if err := e.Start(c, id); err != nil {
			t.Fatalf("start: %v", err)
		}
	}
	ct, err = e.Inspect(c, id)
	if err != nil || ct.Status != "running" || ct.StartedAt.IsZero() || ct.ImageRef != img {
		t.Fatalf("after start: %+v, %v", ct, err)
	}
	if want := dockertest.ImageID(t, img); ct.Image != want {
		t.Fatalf("Image = %s, want %s", ct.Image, want)
	}
	for range 2 {
		if err := e.Stop(c, id, 5*time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
	}
	if ct, err = e.Inspect(c, id); err != nil || ct.Status != "exited" {
		t.Fatalf("after stop: %+v, %v", ct, err)
	}
	for range 2 {
		if err := e.Remove(c, id); err != nil {
			t.Fatalf("remove: %v", err)
		}
	}
	if _, err := e.Inspect(c, id); !errors.Is(err, containers.ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}
}

// TestSetRestartPolicy checks that Inspect reads a container's restart
// policy ("no" when it was given none) and SetRestartPolicy changes it, as
// the daemon then reports it: on a stopped and on a running container,
// twice in a row, "" as "no", a retry count only with on-failure; an
// unknown policy is refused with a classified error naming the container.
func TestSetRestartPolicy(t *testing.T) {
	e, c, p := parallelOnEngine(t)
	img := dockertest.Image(t, dockertest.Variant{Version: "v1"})
	plain := dockertest.Docker(t, "create", "--name", p+"plain", img)
	id := dockertest.Docker(t, "create", "--name", p+"always", "--restart", "always", img)

	check := func(id string, want containers.RestartPolicy, cli string) {
		t.Helper()
		ct, err := e.Inspect(c, id)
		if err != nil {
			t.Fatal(err)
		}
		if ct.RestartPolicy != want {
			t.Errorf("Inspect: restart policy %+v, want %+v", ct.RestartPolicy, want)
		}
		if got := dockertest.Docker(t, "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}", id); got != cli {
			t.Errorf("docker inspect: restart policy %q, want %q", got, cli)
		}
	}
	check(plain, containers.RestartPolicy{Name: "no"}, "no 0")
	check(id, containers.RestartPolicy{Name: "always"}, "always 0")

	for range 2 {
		if err := e.SetRestartPolicy(c, id, containers.RestartPolicy{Name: "no"}); err != nil {
			t.Fatal(err)
		}
	}
	check(id, containers.RestartPolicy{Name: "no"}, "no 0")
	if err := e.SetRestartPolicy(c, id, containers.RestartPolicy{Name: "on-failure", MaxRetries: 3}); err != nil {
		t.Fatal(err)
	}
	check(id, containers.RestartPolicy{Name: "on-failure", MaxRetries: 3}, "on-failure 3")
	if err := e.SetRestartPolicy(c, id, containers.RestartPolicy{MaxRetries: 5}); err != nil {
		t.Fatal(err)
	}
	check(id, containers.RestartPolicy{Name: "no"}, "no 0")
	if err := e.SetRestartPolicy(c, id, containers.RestartPolicy{Name: "unless-stopped", MaxRetries: 2}); err != nil {
		t.Fatal(err)
	}
	check(id, containers.RestartPolicy{Name: "unless-stopped"}, "unless-stopped 0")

	if err := e.Start(c, id); err != nil {
		t.Fatal(err)
	}
	if err := e.SetRestartPolicy(c, id, containers.RestartPolicy{Name: "always"}); err != nil {
		t.Fatal(err)
	}
	check(id, containers.RestartPolicy{Name: "always"}, "always 0")
	if ct, err := e.Inspect(c, id); err != nil || ct.Status != "running" {
		t.Fatalf("after a policy change while running: %+v, %v", ct, err)
	}

	err := e.SetRestartPolicy(c, id, containers.RestartPolicy{Name: "sometimes"})
	var oe *onfailure.Error
	if err == nil || !errors.As(err, &oe) || !onfailure.KindOf(err).Valid() || !strings.Contains(err.Error(), id) {
		t.Fatalf("unknown policy: %v, want a classified error naming the container", err)
	}
	check(id, containers.RestartPolicy{Name: "always"}, "always 0")
}

// TestClone checks that a clone on a new image keeps what the user set on
// the old container (environment, published port, restart policy, labels,
// bind mount, named volume, anonymous volume's data, networks and
// aliases) and takes from the new image what the old one only had from
// its image (VERSION, the health check, the image label), gets its own
// hostname, and serves the new version.
func TestClone(t *testing.T) {
	e, c, p := parallelOnEngine(t)
	v1 := dockertest.Image(t, dockertest.Variant{Version: "v1"})
	v2 := dockertest.Image(t, dockertest.Variant{Version: "v2", HealthCheck: true})
	bind := t.TempDir()
	dockertest.Docker(t, "network", "create", p+"net")
	oldID := dockertest.Run(t, p+"old", v1,
		"-e", "USER_SETTING=kept",
		"-p", "127.0.0.1::8080",
		"--restart", "unless-stopped",
		"--label", "user.label=kept",
		"-v", bind+":/bind:ro",
		"-v", p+"vol:/vol",
		"-v", "/anon",
		"--network", p+"net", "--network-alias", "web",
	)
	dockertest.Docker(t, "network", "connect", "bridge", oldID)
	dockertest.Docker(t, "stop", oldID)

	newID, err := e.Clone(c, oldID, p+"new", v2)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(c, newID); err != nil {
		t.Fatal(err)
	}

	old := inspectJSON(t, oldID)
	got := inspectJSON(t, newID)

	env := got.Config.Env
	for _, want := range []string{"USER_SETTING=kept", "VERSION=v2", "MODE=healthy"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %v lacks %s", env, want)
		}
	}
	if slices.Contains(env, "VERSION=v1") {
		t.Errorf("env %v keeps the old image's VERSION", env)
	}
	if got.Config.Healthcheck == nil || !slices.Equal(got.Config.Healthcheck.Test, []string{"CMD", "/app", "-check"}) {
		t.Errorf("health check %+v, want the new image's", got.Config.Healthcheck)
	}
	if got.Config.Labels["user.label"] != "kept" || got.Config.Labels[dockertest.VersionLabel] != "v2" {
		t.Errorf("labels %v: want user.label=kept and the new image's version label", got.Config.Labels)
	}
	if got.Config.Hostname == old.Config.Hostname {
		t.Errorf("hostname %s is the old container's", got.Config.Hostname)
	}
	if got.HostConfig.RestartPolicy.Name != "unless-stopped" {
		t.Errorf("restart policy %+v", got.HostConfig.RestartPolicy)
	}
	if pb := got.HostConfig.PortBindings["8080/tcp"]; len(pb) != 1 || pb[0].HostIP != "127.0.0.1" {
		t.Errorf("port bindings %+v", got.HostConfig.PortBindings)
	}
	if _, ok := got.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("published port not exposed: %v", got.Config.ExposedPorts)
	}
	mounts := map[string]mountJSON{}
	for _, m := range got.Mounts {
		mounts[m.Destination] = m
	}
	oldMounts := map[string]mountJSON{}
	for _, m := range old.Mounts {
		oldMounts[m.Destination] = m
	}
	if m := mounts["/bind"]; m.Type != "bind" || m.Source != bind || m.RW {
		t.Errorf("bind mount %+v", m)
	}
	if m := mounts["/vol"]; m.Type != "volume" || m.Name != p+"vol" {
		t.Errorf("named volume %+v", m)
	}
	if m := mounts["/anon"]; m.Type != "volume" || m.Name == "" || m.Name != oldMounts["/anon"].Name {
		t.Errorf("anonymous volume %+v, old %+v: not carried over", m, oldMounts["/anon"])
	}
	if _, ok := got.NetworkSettings.Networks["bridge"]; !ok {
		t.Errorf("networks %v: the second network (bridge) is missing", keys(got.NetworkSettings.Networks))
	}
	if n, ok := got.NetworkSettings.Networks[p+"net"]; !ok || !slices.Contains(n.Aliases, "web") {
		t.Errorf("network %s: %+v, want alias web", p+"net", n)
	}

	url := "http://" + got.NetworkSettings.Networks["bridge"].IPAddress + ":8080/"
	if body := dockertest.HTTPGet(t, url); body != "v2\n" {
		t.Fatalf("clone serves %q, want v2", body)
	}
	// Removing the old container keeps the volume the clone uses.
	if err := e.Remove(c, oldID); err != nil {
		t.Fatal(err)
	}
	anon := oldMounts["/anon"].Name
	dockertest.Docker(t, "volume", "inspect", anon)
	// The clone mounts it by name, so removing the clone keeps it too.
	if err := e.Remove(c, newID); err != nil {
		t.Fatal(err)
	}
	dockertest.Docker(t, "volume", "rm", anon)
}

// TestCloneKeepsUserCommand checks that a command, entrypoint and user the
// user set stay, while those equal to the old image's go.
func TestCloneKeepsUserCommand(t *testing.T) {
	e, c, p := parallelOnEngine(t)
	v1 := dockertest.Image(t, dockertest.Variant{Version: "v1"})
	v2 := dockertest.Image(t, dockertest.Variant{Version: "v2"})
	a := dockertest.Docker(t, "create", "--name", p+"a", "--user", "1000", "--workdir", "/tmp", v1, "-user-arg")
	b := dockertest.Docker(t, "create", "--name", p+"b", v1)
	na, err := e.Clone(c, a, p+"a2", v2)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := e.Clone(c, b, p+"b2", v2)
	if err != nil {
		t.Fatal(err)
	}
	ga, gb := inspectJSON(t, na), inspectJSON(t, nb)
	if !slices.Equal(ga.Config.Cmd, []string{"-user-arg"}) || ga.Config.User != "1000" || ga.Config.WorkingDir != "/tmp" {
		t.Errorf("user settings lost: cmd %v user %q workdir %q", ga.Config.Cmd, ga.Config.User, ga.Config.WorkingDir)
	}
	if !slices.Equal(gb.Config.Entrypoint, []string{"/app"}) || len(gb.Config.Cmd) != 0 {
		t.Errorf("image defaults: entrypoint %v cmd %v", gb.Config.Entrypoint, gb.Config.Cmd)
	}
}

// TestProjectContainers checks the listing of a compose project: its
// containers only (not another project's, not one-off ones), with
// service, health and restart count; a crash-looping container with
// restart policy always shows its restart count rising.
func TestProjectContainers(t *testing.T) {
	e, c, p := parallelOnEngine(t)
	project := strings.TrimSuffix(p, "-")
	healthy := dockertest.Image(t, dockertest.Variant{Version: "v1", HealthCheck: true})
	crash := dockertest.Image(t, dockertest.Variant{Version: "v2", Mode: "crash"})
	lbl := func(service string) []string {
		return []string{"--label", "com.docker.compose.project=" + project, "--label", "com.docker.compose.service=" + service}
	}
	dockertest.Run(t, p+"web-1", healthy, lbl("web")...)
	dockertest.Run(t, p+"loop-1", crash, append(lbl("loop"), "--restart", "always")...)
	dockertest.Docker(t, append(append([]string{"create", "--name", p + "run-1"}, lbl("web")...), "--label", "com.docker.compose.oneoff=True", healthy)...)
	dockertest.Docker(t, "create", "--name", p+"other-1", "--label", "com.docker.compose.project="+project+"-other", healthy)

	var sawHealthy bool
	restarts := -1
	rising := 0
	deadline := time.Now().Add(45 * time.Second)
	for !(sawHealthy && rising >= 2) {
		if time.Now().After(deadline) {
			t.Fatalf("no healthy web and rising restarts: healthy %v, restarts rose %d times", sawHealthy, rising)
		}
		cs, err := e.ProjectContainers(c, project)
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) != 2 || cs[0].Service != "loop" || cs[1].Service != "web" {
			t.Fatalf("project containers %+v, want loop and web", cs)
		}
		loop, web := cs[0], cs[1]
		if web.Name != p+"web-1" || web.ImageRef != healthy || web.Status != "running" && web.Status != "created" {
			t.Fatalf("web %+v", web)
		}
		if web.Health == "healthy" {
			sawHealthy = true
		}
		if loop.Health != "" {
			t.Fatalf("loop has no health check but reports %q", loop.Health)
		}
		if loop.RestartCount > restarts {
			if restarts >= 0 {
				rising++
			}
			restarts = loop.RestartCount
		}
		if loop.RestartCount > 0 && loop.ExitCode != 3 && loop.Status != "running" {
			t.Fatalf("loop exit code %d, want 3 (%+v)", loop.ExitCode, loop)
		}
		time.Sleep(300 * time.Millisecond)
	}
	cs, err := e.ProjectContainers(c, "edgeflow-no-such-project-"+p)
	if err != nil || len(cs) != 0 {
		t.Fatalf("unknown project: %v, %v", cs, err)
	}
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}
