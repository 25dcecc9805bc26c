package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func root(stdout *bytes.Buffer) *cobra.Command {
	r := &cobra.Command{Use: "edgeflow"}
	r.SetOut(stdout)
	r.AddCommand(ValidateCommand(stdout))
	return r
}

func TestValidateExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("version: 1\nname: ok\nsteps: [{name: a, script: {run: x}}]\n"), 0o644)
	os.WriteFile(bad, []byte("version: 1\nname: ok\nstepz: []\n"), 0o644)

	var out, errb bytes.Buffer
	if code := Run(root(&out), []string{"validate", good}, &errb); code != ExitOK || !strings.Contains(out.String(), `flow "ok" is valid`) {
		t.Fatalf("valid flow: exit %d, out %q, err %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := Run(root(&out), []string{"validate", bad}, &errb)
	want := bad + `:3:1: unknown key "stepz" (did you mean "steps"?)`
	if code != ExitInvalid || !strings.Contains(errb.String(), want) || strings.HasPrefix(errb.String(), "edgeflow:") {
		t.Fatalf("invalid flow: exit %d, stderr %q, want a line %q", code, errb.String(), want)
	}
	errb.Reset()
	if code := Run(root(&out), []string{"validate"}, &errb); code != ExitInvalid {
		t.Fatalf("missing argument: exit %d, want %d", code, ExitInvalid)
	}
	if code := Run(root(&out), []string{"validate", filepath.Join(dir, "missing.yaml")}, &errb); code != ExitInvalid {
		t.Fatalf("unreadable flow: exit %d, want %d", code, ExitInvalid)
	}
}
