package journal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T, dir string) *Journal {
	t.Helper()
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = j.Close() })
	return j
}

func TestOpenCreatesStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "agent")
	j := open(t, dir)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, want 0700", fi.Mode().Perm())
	}
	if want := filepath.Join(dir, FileName); j.Path() != want {
		t.Errorf("Path() = %s, want %s", j.Path(), want)
	}
	if got := readPIDFile(filepath.Join(dir, PIDFileName)); got != os.Getpid() {
		t.Errorf("agent.pid holds %d, want our pid %d", got, os.Getpid())
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, PIDFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("agent.pid after Close: %v, want it removed", err)
	}
	if err := j.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	j := open(t, t.TempDir())

	// Written out of order; listed in key order.
	recs := map[string]string{
		"20240102T000000Z-b": `{"flow":"b"}`,
		"20240101T000000Z-a": `{"flow":"a"}`,
		"20240103T000000Z-c": `{"flow":"c"}`,
	}
	for _, id := range []string{"20240102T000000Z-b", "20240103T000000Z-c", "20240101T000000Z-a"} {
		if err := j.PutExecution(id, []byte(recs[id])); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := j.Executions()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"20240101T000000Z-a", "20240102T000000Z-b", "20240103T000000Z-c"}
	if !slices.Equal(ids, want) {
		t.Errorf("Executions() = %q, want %q", ids, want)
	}
	for id, rec := range recs {
		got, err := j.Execution(id)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != rec {
			t.Errorf("Execution(%s) = %s, want %s", id, got, rec)
		}
	}
	// Replacing a record keeps one key.
	if err := j.PutExecution("20240101T000000Z-a", []byte(`{"flow":"a","v":2}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := j.Execution("20240101T000000Z-a"); string(got) != `{"flow":"a","v":2}` {
		t.Errorf("replaced record reads %s", got)
	}
	if ids, _ := j.Executions(); len(ids) != 3 {
		t.Errorf("after replace: %d executions, want 3", len(ids))
	}
	if _, err := j.Execution("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Execution(missing) = %v, want ErrNotFound", err)
	}

	// Current pointer.
	if cur, err := j.Current(); err != nil || cur != "" {
		t.Errorf("Current() on a new journal = %q, %v; want \"\"", cur, err)
	}
	if err := j.SetCurrent("20240103T000000Z-c"); err != nil {
		t.Fatal(err)
	}
	if cur, _ := j.Current(); cur != "20240103T000000Z-c" {
		t.Errorf("Current() = %q", cur)
	}
	if err := j.SetCurrent("missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetCurrent(missing) = %v, want ErrNotFound", err)
	}
	if cur, _ := j.Current(); cur != "20240103T000000Z-c" {
		t.Errorf("a refused SetCurrent moved the pointer to %q", cur)
	}
	if err := j.SetCurrent(""); err != nil {
		t.Fatal(err)
	}
	if cur, _ := j.Current(); cur != "" {
		t.Errorf("Current() after clearing = %q", cur)
	}

	// Logs.
	id := "20240103T000000Z-c"
	for attempt := 1; attempt <= 3; attempt++ {
		if err := j.PutLog(id, "migrate", attempt, []byte("out "+strconv.Itoa(attempt))); err != nil {
			t.Fatal(err)
		}
	}
	for attempt := 1; attempt <= 3; attempt++ {
		got, err := j.Log(id, "migrate", attempt)
		if err != nil {
			t.Fatal(err)
		}
		if want := "out " + strconv.Itoa(attempt); string(got) != want {
			t.Errorf("Log(%d) = %q, want %q", attempt, got, want)
		}
	}
	if _, err := j.Log(id, "migrate", 4); !errors.Is(err, ErrNotFound) {
		t.Errorf("Log(missing attempt) = %v, want ErrNotFound", err)
	}
	if _, err := j.Log(id, "other", 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Log(missing step) = %v, want ErrNotFound", err)
	}
	// An empty log is a stored log, not a missing one.
	if err := j.PutLog(id, "quiet", 1, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := j.Log(id, "quiet", 1); err != nil || len(got) != 0 {
		t.Errorf("empty log reads %q, %v", got, err)
	}
}

func TestReturnedBytesAreCopies(t *testing.T) {
	j := open(t, t.TempDir())
	if err := j.PutExecution("e1", []byte("record")); err != nil {
		t.Fatal(err)
	}
	got, _ := j.Execution("e1")
	got[0] = 'X'
	again, _ := j.Execution("e1")
	if string(again) != "record" {
		t.Errorf("changing a returned record changed the journal: %q", again)
	}
}

func TestLogKeysSortByAttempt(t *testing.T) {
	var keys []string
	for _, a := range []int{10, 2, 1, 100, 9} {
		k, err := logKey("e", "s", a)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, string(k))
	}
	slices.Sort(keys)
	want := []string{"e/s/00000001", "e/s/00000002", "e/s/00000009", "e/s/00000010", "e/s/00000100"}
	if !slices.Equal(keys, want) {
		t.Errorf("sorted keys %q, want %q", keys, want)
	}
}

func TestBadNamesRefused(t *testing.T) {
	j := open(t, t.TempDir())
	if err := j.PutExecution("", []byte("x")); err == nil {
		t.Error("PutExecution with an empty id succeeded")
	}
	if err := j.PutExecution("a/b", []byte("x")); err == nil {
		t.Error("PutExecution with '/' in the id succeeded")
	}
	if err := j.PutLog("e", "a/b", 1, nil); err == nil {
		t.Error("PutLog with '/' in the step succeeded")
	}
	if err := j.PutLog("e", "s", -1, nil); err == nil {
		t.Error("PutLog with a negative attempt succeeded")
	}
	if ids, _ := j.Executions(); len(ids) != 0 {
		t.Errorf("refused writes stored %q", ids)
	}
}

func TestPutExecutionCurrent(t *testing.T) {
	j := open(t, t.TempDir())
	cur := func() string {
		t.Helper()
		c, err := j.Current()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if err := j.PutExecutionCurrent("e1", []byte("running"), true); err != nil {
		t.Fatal(err)
	}
	if c := cur(); c != "e1" {
		t.Fatalf("current %q, want e1", c)
	}
	// Finishing another execution leaves the pointer alone.
	if err := j.PutExecutionCurrent("e0", []byte("done"), false); err != nil {
		t.Fatal(err)
	}
	if c := cur(); c != "e1" {
		t.Fatalf("finishing e0 moved current to %q", c)
	}
	// Finishing e1 clears it, and the record is the finished one.
	if err := j.SaveExecution("e1", []byte("done"), false); err != nil {
		t.Fatal(err)
	}
	if c := cur(); c != "" {
		t.Fatalf("current %q after e1 finished, want none", c)
	}
	if rec, _ := j.Execution("e1"); string(rec) != "done" {
		t.Errorf("e1 record %q", rec)
	}
	if err := j.SaveLog("e1", "web", 1, []byte("log")); err != nil {
		t.Fatal(err)
	}
	if l, _ := j.Log("e1", "web", 1); string(l) != "log" {
		t.Errorf("SaveLog stored %q", l)
	}
}

func TestDeleteExecution(t *testing.T) {
	j := open(t, t.TempDir())
	for _, id := range []string{"a", "ab", "b"} {
		if err := j.PutExecution(id, []byte(id)); err != nil {
			t.Fatal(err)
		}
		for attempt := 1; attempt <= 2; attempt++ {
			if err := j.PutLog(id, "s", attempt, []byte(id)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := j.SetCurrent("b"); err != nil {
		t.Fatal(err)
	}
	if err := j.DeleteExecution("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Execution("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted record: %v", err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		if _, err := j.Log("a", "s", attempt); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted log %d: %v", attempt, err)
		}
		// "ab" shares a prefix with "a" but is another execution.
		if l, err := j.Log("ab", "s", attempt); err != nil || string(l) != "ab" {
			t.Errorf("log of ab after deleting a: %q, %v", l, err)
		}
	}
	if ids, _ := j.Executions(); !slices.Equal(ids, []string{"ab", "b"}) {
		t.Errorf("executions after delete: %q", ids)
	}
	if err := j.DeleteExecution("a"); err != nil {
		t.Errorf("deleting a missing execution: %v", err)
	}
	// The unfinished execution is not pruned.
	if err := j.DeleteExecution("b"); err == nil {
		t.Error("DeleteExecution of the current execution succeeded")
	}
	if _, err := j.Execution("b"); err != nil {
		t.Errorf("refused delete lost the record: %v", err)
	}
	if l, err := j.Log("b", "s", 1); err != nil || string(l) != "b" {
		t.Errorf("refused delete lost the logs: %q, %v", l, err)
	}
}

func TestDurableAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.PutExecutionCurrent("e1", []byte(`{"status":"Running"}`), true); err != nil {
		t.Fatal(err)
	}
	if err := j.PutLog("e1", "config", 1, []byte("wrote /etc/app.conf")); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j = open(t, dir)
	if rec, err := j.Execution("e1"); err != nil || string(rec) != `{"status":"Running"}` {
		t.Errorf("after reopen: record %q, %v", rec, err)
	}
	if cur, err := j.Current(); err != nil || cur != "e1" {
		t.Errorf("after reopen: current %q, %v", cur, err)
	}
	if l, err := j.Log("e1", "config", 1); err != nil || string(l) != "wrote /etc/app.conf" {
		t.Errorf("after reopen: log %q, %v", l, err)
	}
}

func TestConcurrentWrites(t *testing.T) {
	j := open(t, t.TempDir())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			step := fmt.Sprintf("s%d", i)
			if err := j.PutLog("e", step, 1, []byte(step)); err != nil {
				t.Error(err)
			}
			if err := j.PutExecution(fmt.Sprintf("e%d", i), []byte(step)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ids, _ := j.Executions(); len(ids) != 8 {
		t.Errorf("%d executions after concurrent writes, want 8", len(ids))
	}
}

// A second Open in this process gets its own open file description, so
// bbolt's flock conflicts with the first one just as it would across
// processes.
func TestSecondOpenInProcessIsInUse(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	j2, err := Open(dir, Options{OpenTimeout: 200 * time.Millisecond})
	if err == nil {
		j2.Close()
		t.Fatal("a second Open of the same state dir succeeded")
	}
	var iu *InUseError
	if !errors.As(err, &iu) {
		t.Fatalf("second Open: %v (%T), want *InUseError", err, err)
	}
	if iu.PID != os.Getpid() || iu.Dir != dir {
		t.Errorf("InUseError = %+v, want pid %d dir %s", iu, os.Getpid(), dir)
	}
	if want := fmt.Sprintf("state dir %s in use by pid %d", dir, os.Getpid()); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// The failed Open must not have removed or replaced the owner's pid file.
	if got := readPIDFile(filepath.Join(dir, PIDFileName)); got != os.Getpid() {
		t.Errorf("agent.pid holds %d after the failed Open", got)
	}
}

func TestInUseErrorWithoutPID(t *testing.T) {
	e := &InUseError{Dir: "/var/lib/edgeflow"}
	if got, want := e.Error(), "state dir /var/lib/edgeflow in use by another process"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

const helperEnv = "EDGEFLOW_JOURNAL_HELPER_DIR"

// TestHelperProcess is not a test: run as a child by
// TestOpenHeldByAnotherProcess, it opens the journal, says "ready", and
// holds the journal until it is killed or its stdin closes.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestOpenHeldByAnotherProcess")
	}
	j, err := Open(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	if err := j.PutExecution("from-child", []byte("child")); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	fmt.Printf("ready %d\n", os.Getpid())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	_ = j.Close()
	os.Exit(0)
}

func TestOpenHeldByAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	// Wait for the child to hold the journal: it says so on stdout.
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
			if pid, _ := strconv.Atoi(line); pid != cmd.Process.Pid {
				t.Fatalf("child says pid %s, started as %d", line, cmd.Process.Pid)
			}
			ready = true
			break
		}
	}
	if !ready {
		_ = cmd.Wait()
		t.Fatalf("helper process did not get ready: %v\n%s", sc.Err(), stderr.String())
	}

	_, err = Open(dir, Options{OpenTimeout: 200 * time.Millisecond})
	var iu *InUseError
	if !errors.As(err, &iu) {
		t.Fatalf("Open while another process holds it: %v (%T), want *InUseError", err, err)
	}
	if iu.PID != cmd.Process.Pid || iu.Dir != dir {
		t.Errorf("InUseError = %+v, want pid %d dir %s", iu, cmd.Process.Pid, dir)
	}
	if want := fmt.Sprintf("state dir %s in use by pid %d", dir, cmd.Process.Pid); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}

	// SIGKILL: the child cannot clean up, so its pid file stays behind.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL", cmd.ProcessState)
	}
	pidPath := filepath.Join(dir, PIDFileName)
	if got := readPIDFile(pidPath); got != cmd.Process.Pid {
		t.Fatalf("stale agent.pid holds %d, want the killed child's %d", got, cmd.Process.Pid)
	}

	// The kernel released the lock with the process: Open succeeds, takes
	// over the stale pid file, and sees what the child wrote.
	j, err := Open(dir, Options{OpenTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after the holder was killed: %v", err)
	}
	defer j.Close()
	if got := readPIDFile(pidPath); got != os.Getpid() {
		t.Errorf("agent.pid holds %d after takeover, want %d", got, os.Getpid())
	}
	if rec, err := j.Execution("from-child"); err != nil || string(rec) != "child" {
		t.Errorf("record written by the killed child: %q, %v", rec, err)
	}
}

// A pid file naming a process that no longer runs says nothing about who
// holds the lock.
func TestReadPIDIgnoresDeadProcess(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	p := filepath.Join(dir, PIDFileName)
	if err := writePID(p, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if got := readPID(p); got != 0 {
		// The pid may have been reused already; only fail if it is dead.
		if err := syscall.Kill(cmd.Process.Pid, 0); errors.Is(err, syscall.ESRCH) {
			t.Errorf("readPID = %d for a dead process, want 0", got)
		}
	}
	if err := os.WriteFile(p, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readPID(p); got != 0 {
		t.Errorf("readPID of garbage = %d, want 0", got)
	}
}

// writeRaw edits a journal file with bbolt directly, bypassing the package.
func writeRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// refused opens dir expecting an error matching target, and checks that
// the journal file's bytes did not change and no pid file was left.
func refused(t *testing.T, dir string, target error, wantText ...string) error {
	t.Helper()
	path := filepath.Join(dir, FileName)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := Open(dir, Options{})
	if err == nil {
		j.Close()
		t.Fatalf("Open succeeded, want %v", target)
	}
	if !errors.Is(err, target) {
		t.Errorf("Open: %v, want %v", err, target)
	}
	for _, w := range append([]string{path}, wantText...) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	after, rerr := os.ReadFile(path)
	if rerr != nil {
		t.Fatalf("journal file after refused Open: %v", rerr)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("refused Open changed the file (%d bytes before, %d after)", len(before), len(after))
	}
	if _, serr := os.Stat(filepath.Join(dir, PIDFileName)); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("refused Open left a pid file: %v", serr)
	}
	return err
}

func TestNewerSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	if err := j.PutExecution("e1", []byte("keep me")); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, j.Path(), func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("2"))
	})

	refused(t, dir, ErrNewerSchema, "newer edgeflow-agent", "upgrade", "move the file aside")

	// Still readable as it was by someone who knows version 2.
	db, err := bolt.Open(j.Path(), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("executions")).Get([]byte("e1")); string(v) != "keep me" {
			t.Errorf("record after refusal: %q", v)
		}
		return nil
	})
}

func TestUnknownSchemaRefused(t *testing.T) {
	for _, v := range []string{"0", "one", ""} {
		t.Run(strconv.Quote(v), func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, dir)
			j.Close()
			writeRaw(t, j.Path(), func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte(v))
			})
			refused(t, dir, ErrNotJournal)
		})
	}
}

func TestForeignBoltDBRefused(t *testing.T) {
	dir := t.TempDir()
	writeRaw(t, filepath.Join(dir, FileName), func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("deployments"))
		if err != nil {
			return err
		}
		return b.Put([]byte("d1"), []byte("x"))
	})
	refused(t, dir, ErrNotJournal, "not an edgeflow journal", `"deployments"`)
}

func TestGarbageFileRefused(t *testing.T) {
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte(i*7 + i/251)
	}
	for name, content := range map[string][]byte{
		"text":   []byte("this is not a database\n"),
		"binary": big,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, FileName), content, 0o600); err != nil {
				t.Fatal(err)
			}
			refused(t, dir, ErrCorrupt, "restore it from a backup", "move it aside")
		})
	}
}

// A journal whose data buckets went missing (written by a buggy tool, say)
// but whose schema is current is repaired by creating them.
func TestCurrentSchemaMissingBucketsRecreated(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	j.Close()
	writeRaw(t, j.Path(), func(tx *bolt.Tx) error {
		return tx.DeleteBucket([]byte("logs"))
	})
	j = open(t, dir)
	if err := j.PutLog("e", "s", 1, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestInstalledVersion: the installed release of a flow is recorded with
// its execution's final record, only goes up, survives a reopen, and a
// file from before the bucket existed gets it on open.
func TestInstalledVersion(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := j.Installed("web"); ok || err != nil {
		t.Fatalf("a new journal has an installed version (%v)", err)
	}
	if err := j.PutExecutionCurrent("e1", []byte("running"), true); err != nil {
		t.Fatal(err)
	}
	if err := j.SaveExecutionInstalled("e1", []byte("done"), "web", 7); err != nil {
		t.Fatal(err)
	}
	if cur, err := j.Current(); err != nil || cur != "" {
		t.Fatalf("current pointer %q (%v) after the final record", cur, err)
	}
	if rec, _ := j.Execution("e1"); string(rec) != "done" {
		t.Fatalf("record %q", rec)
	}
	if err := j.SaveExecutionInstalled("e2", []byte("done"), "web", 5); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := j.Installed("web"); !ok || v != 7 {
		t.Fatalf("installed %d %v after an older release, want 7", v, ok)
	}
	if err := j.SaveExecutionInstalled("e3", []byte("done"), "web", 9); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := j.Installed("web"); !ok || v != 9 {
		t.Fatalf("installed %d %v after a newer release, want 9", v, ok)
	}
	if err := j.SaveExecutionInstalled("e4", []byte("done"), "", 1); err == nil {
		t.Fatal("an empty flow name was accepted")
	}
	// A file written before the installed bucket existed.
	if err := j.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketInstalled) }); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, ok, err := j.Installed("web"); ok || err != nil {
		t.Fatalf("installed after the bucket was dropped: %v %v", ok, err)
	}
	if err := j.SaveExecutionInstalled("e5", []byte("done"), "web", 3); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := j.Installed("web"); !ok || v != 3 {
		t.Fatalf("installed %d %v, want 3", v, ok)
	}
}

// TestRestoreInstalledWithFinalRecord: an undone execution's final record
// and the installed release it puts back commit in one transaction; the
// release may go down, or away.
func TestRestoreInstalledWithFinalRecord(t *testing.T) {
	j, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.SaveExecutionInstalled("e1", []byte("done"), "web", 7); err != nil {
		t.Fatal(err)
	}
	if err := j.PutExecutionCurrent("e1", []byte("undoing"), true); err != nil {
		t.Fatal(err)
	}
	err = j.Update(func(tx *Tx) error {
		if v, ok, err := tx.Installed("web"); err != nil || !ok || v != 7 {
			t.Errorf("installed in tx: %d %v %v", v, ok, err)
		}
		if err := tx.PutExecutionFinished("e1", []byte("undone")); err != nil {
			return err
		}
		return tx.SetInstalled("web", 5, true)
	})
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := j.Current(); cur != "" {
		t.Errorf("current %q after the final record", cur)
	}
	if rec, _ := j.Execution("e1"); string(rec) != "undone" {
		t.Errorf("record %q", rec)
	}
	if v, ok, _ := j.Installed("web"); !ok || v != 5 {
		t.Errorf("installed %d %v, want 5", v, ok)
	}
	// A failed transaction keeps nothing.
	_ = j.Update(func(tx *Tx) error {
		_ = tx.SetInstalled("web", 0, false)
		return errors.New("boom")
	})
	if v, ok, _ := j.Installed("web"); !ok || v != 5 {
		t.Errorf("installed %d %v after a failed tx, want 5", v, ok)
	}
	if err := j.Update(func(tx *Tx) error { return tx.SetInstalled("web", 0, false) }); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := j.Installed("web"); ok {
		t.Error("installed still recorded after none was put back")
	}
}
