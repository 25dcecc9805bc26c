// Package fleettest runs edgeflow the way its users do, for end-to-end
// tests: the real `edgeflow` and `edgeflow-agent` binaries as processes on
// loopback ports, driven through the operator CLI, and stopped, killed and
// restarted by the test.
//
//   - Build builds both binaries once per test binary (Main removes them
//     when the tests end).
//   - NewKey writes a signing key pair: the private half signs bundles
//     (`edgeflow deploy --key`), the public half is what agents trust
//     (`--trusted-key`).
//   - StartController runs `edgeflow serve` with a data dir, on free
//     loopback ports, with the embedded broker or an external one (such as
//     a brokertest.Mosquitto's URL). A restart keeps its data dir and its
//     ports, so the agents and the CLI find it again.
//   - StartAgent runs `edgeflow-agent run` with a state dir and a device
//     directory of its own (see Agent.Dir); Agent.CLI runs a command on
//     the device against that state dir (`edgeflow-agent status`), as an
//     operator on the device would.
//   - Controller.CLI runs an operator command (`edgeflow deploy ...`) as a
//     process against the controller and returns its exit code, stdout and
//     stderr; Controller.StartCLI runs one in the background (a `watch`
//     across a controller restart).
//   - New starts a whole fleet: a key, a controller and agents, and waits
//     until every agent is online.
//
// Every process is killed when its test ends (and when the test binary
// dies: they get SIGKILL as their parent's death signal), and its log is
// shown when the test failed. Every wait is bounded by Deadline, a safety
// net against a hang and not a performance assertion.
//
// # Devices on one machine
//
// All agents of a test run on the test's machine, so a flow that installs
// /etc/app.conf would have every "device" write the same file. Each agent
// therefore runs in a directory of its own (Agent.Dir, its working
// directory), and test flows install files below /proc/self/cwd/: the
// agent resolves that link in its own process, so the file lands in its
// Agent.Dir. A verify command (run by the agent's shell) finds the same
// directory as /proc/$PPID/cwd.
package fleettest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/packaging"
)

// Deadline bounds every wait of this package: generous, because test
// machines are noisy, and never an assertion about speed.
const Deadline = 60 * time.Second

// Module is the import path of the edgeflow module, whose commands Build
// builds.
const Module = "github.com/edgeflow/edgeflow"

// Binaries are the paths of the built commands.
type Binaries struct {
	// Edgeflow is the controller and operator CLI (cmd/controller).
	Edgeflow string
	// Agent is the device agent (cmd/agent).
	Agent string
}

var (
	buildOnce sync.Once
	buildDir  string
	built     Binaries
	buildErr  error
)

// RaceEnv is the environment variable that makes Build build the
// binaries with the race detector (RaceEnv=1): slower processes, but a data
// race in the controller or an agent then fails the test that ran it.
const RaceEnv = "EDGEFLOW_FLEETTEST_RACE"

// LogsEnv is the environment variable that shows every process's log
// when its test ends (LogsEnv=1), not only when the test failed.
const LogsEnv = "EDGEFLOW_FLEETTEST_LOGS"

// Build builds edgeflow and edgeflow-agent the first time it is called in
// this test binary, as `make build` does (CGO_ENABLED=0, -trimpath; with
// RaceEnv=1, -race instead), into a temporary directory, and returns their
// paths. A build that fails fails t (and every later caller).
func Build(t testing.TB) Binaries {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		buildDir, buildErr = os.MkdirTemp("", "edgeflow-fleettest-")
		if buildErr != nil {
			return
		}
		built = Binaries{Edgeflow: filepath.Join(buildDir, "edgeflow"), Agent: filepath.Join(buildDir, "edgeflow-agent")}
		goBin, err := goCommand()
		if err != nil {
			buildErr = err
			return
		}
		for _, b := range []struct{ out, pkg string }{
			{built.Agent, Module + "/cmd/agent"},
			{built.Edgeflow, Module + "/cmd/controller"},
		} {
			args := []string{"build", "-trimpath", "-ldflags", "-X main.version=fleettest", "-o", b.out}
			env := append(os.Environ(), "CGO_ENABLED=0")
			if os.Getenv(RaceEnv) == "1" {
				args = append(args, "-race")
				env = append(os.Environ(), "CGO_ENABLED=1")
			}
			cmd := exec.Command(goBin, append(args, b.pkg)...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
				return
			}
		}
		t.Logf("fleettest: built edgeflow and edgeflow-agent in %v", time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatalf("fleettest: %v", buildErr)
	}
	return built
}

// goCommand finds the go command: in PATH, else in $GOROOT/bin.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("the go command is neither in PATH nor in $GOROOT/bin: it is needed to build edgeflow for the test")
}

// Main runs the tests of m and then removes the binaries Build built.
// Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	return code
}

// Key is a signing key pair written as files.
type Key struct {
	// Private is the PREFIX.key file: `edgeflow deploy --key` signs with it.
	Private string
	// Public is the PREFIX.pub file: agents trust it with --trusted-key.
	Public string
	// ID is the key's id, as bundles and `deployment show` name it.
	ID string
}

// NewKey generates a key pair and writes it into a temporary directory of
// t.
func NewKey(t testing.TB) Key {
	t.Helper()
	priv, _, err := packaging.GenerateKey()
	if err != nil {
		t.Fatalf("generate a signing key: %v", err)
	}
	keyPath, pubPath, err := packaging.WriteKeyFiles(filepath.Join(t.TempDir(), "release"), priv)
	if err != nil {
		t.Fatalf("write the signing key: %v", err)
	}
	return Key{Private: keyPath, Public: pubPath, ID: priv.ID()}
}

// WaitFor polls cond every 50ms until it returns true, failing t with
// what (and cond's last error, when it gave one) once Deadline has
// passed.
func WaitFor(t testing.TB, what string, cond func() error) {
	t.Helper()
	end := time.Now().Add(Deadline)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s: %v", Deadline, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
