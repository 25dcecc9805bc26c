package dockertest

import (
	"strings"
	"testing"
	"time"
)

// TestImageServesVariant builds (or reuses) a cached image and checks that
// a container of it serves its version, reports healthy, and carries the
// test labels; and that building again is a cache hit with the same tag.
func TestImageServesVariant(t *testing.T) {
	t.Parallel()
	Engine(t)
	v := Variant{Version: "v1", Mode: "healthy", HealthCheck: true}
	img := Image(t, v)
	if !strings.HasPrefix(img, Repository+":") {
		t.Fatalf("image tag %q is not under %s", img, Repository)
	}
	if again := Image(t, v); again != img {
		t.Fatalf("same variant gave tags %s and %s", img, again)
	}
	if Image(t, Variant{Version: "v2", Mode: "healthy", HealthCheck: true}) == img {
		t.Fatal("different variants share a tag")
	}
	if got := Docker(t, "image", "inspect", "--format", `{{index .Config.Labels "edgeflow.test"}}`, img); got != "1" {
		t.Fatalf("label %s = %q, want 1", Label, got)
	}

	p := Prefix(t)
	Run(t, p+"app", img)
	if body := HTTPGet(t, AppURL(t, p+"app", "/")); body != "v1\n" {
		t.Fatalf("GET / = %q, want %q", body, "v1\n")
	}
	waitFor(t, func() bool {
		return Docker(t, "inspect", "--format", "{{.State.Health.Status}}", p+"app") == "healthy"
	}, "container to be healthy")
}

// TestCrashVariantExits checks MODE=crash: the app exits with code 3.
func TestCrashVariantExits(t *testing.T) {
	t.Parallel()
	Engine(t)
	img := Image(t, Variant{Version: "v2", Mode: "crash"})
	p := Prefix(t)
	Run(t, p+"crash", img)
	if code := Docker(t, "wait", p+"crash"); code != "3" {
		t.Fatalf("exit code %s, want 3", code)
	}
}

// TestUnhealthyVariant checks that MODE=unhealthy with a health check
// becomes unhealthy while it still serves its version.
func TestUnhealthyVariant(t *testing.T) {
	t.Parallel()
	Engine(t)
	img := Image(t, Variant{Version: "v2", Mode: "unhealthy", HealthCheck: true})
	p := Prefix(t)
	Run(t, p+"sick", img)
	waitFor(t, func() bool {
		return Docker(t, "inspect", "--format", "{{.State.Health.Status}}", p+"sick") == "unhealthy"
	}, "container to be unhealthy")
	if body := HTTPGet(t, AppURL(t, p+"sick", "/")); body != "v2\n" {
		t.Fatalf("GET / = %q, want v2", body)
	}
}

// TestCleanupKeepsOthers checks that removing one prefix's objects leaves
// another prefix's alone, and that FreshImage's image goes with its test.
func TestCleanupKeepsOthers(t *testing.T) {
	t.Parallel()
	Engine(t)
	img := Image(t, Variant{Version: "v1"})
	mine, other := Prefix(t), Prefix(t)
	Run(t, mine+"a", img)
	Docker(t, "network", "create", mine+"net")
	Run(t, other+"b", img)

	RemoveAll(t, mine)
	if out := Docker(t, "ps", "-a", "--format", "{{.Names}}", "--filter", "name="+mine); out != "" {
		t.Fatalf("containers left under %s: %s", mine, out)
	}
	if out := Docker(t, "network", "ls", "--format", "{{.Name}}", "--filter", "name="+mine); out != "" {
		t.Fatalf("networks left under %s: %s", mine, out)
	}
	if out := Docker(t, "ps", "-a", "--format", "{{.Names}}", "--filter", "name="+other); out != other+"b" {
		t.Fatalf("the other prefix's container is gone: %q", out)
	}

	var fresh string
	t.Run("fresh", func(t *testing.T) {
		fresh = FreshImage(t, Variant{Version: "v1"})
		if ImageID(t, fresh) == ImageID(t, img) {
			t.Fatal("fresh image has the cached image's id")
		}
		Run(t, other+"fresh", fresh)
	})
	if ImageExists(fresh) {
		t.Fatalf("fresh image %s outlived its test", fresh)
	}
}

// waitFor polls cond for up to 30 seconds.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
