package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/containers"
	"github.com/edgeflow/edgeflow/steps/file"
)

// DefaultDir is the default root of the project directories.
const DefaultDir = "/var/lib/edgeflow/compose"

// FileName is the name of a project's compose file in its project
// directory.
const FileName = "compose.yaml"

// DirMode is the mode of the project directories the step creates;
// FileMode the mode of the project files it installs (a compose file may
// hold credentials).
const (
	DirMode  = 0o755
	FileMode = 0o600
)

// MaxFileSize is the largest compose file the step reads.
const MaxFileSize = 4 << 20

// projectRE is what a project name must match (as flow validation says):
// it names a directory under Runner.Dir.
var projectRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Runner runs compose steps and undoes them (revertComposeFile).
type Runner struct {
	// Engine is the Docker engine.
	Engine containers.Engine
	// Dir is the root of the project directories: a project's file is
	// Dir/<project>/compose.yaml. Empty means DefaultDir.
	Dir string
	// Command is the Compose CLI argv prefix, such as
	// ["docker", "compose"]; empty means the one Detect finds.
	Command []string
	// Grace is the time the CLI's process group has between SIGTERM and
	// SIGKILL when the step is stopped; zero means script.DefaultGrace.
	Grace time.Duration
	// Health tunes the health wait; its Window is the default for steps
	// that set no waitHealthy (zero: containers.DefaultWindow), and its
	// Expect is ignored. Tests shorten it.
	Health containers.Options

	mu       sync.Mutex
	detected []string
}

var (
	_ steps.Runner = (*Runner)(nil)
	_ steps.Undoer = (*Runner)(nil)
)

// Preflight checks a compose step before the flow starts, changing
// nothing: its file and every image archive are regular files inside
// root. Run checks them again, and validates the file with the CLI.
func (r *Runner) Preflight(s *flow.Step, root string) error {
	c := s.Compose
	if c == nil {
		return onfailure.Errorf(onfailure.Unknown, "step %q is not a compose step", s.Name)
	}
	var probs []string
	if _, err := file.InRoot(root, c.File); err != nil {
		probs = append(probs, fmt.Sprintf("compose file %s: %v", c.File, err))
	}
	for _, a := range c.Images {
		if _, err := file.InRoot(root, a); err != nil {
			probs = append(probs, fmt.Sprintf("image archive %s: %v", a, err))
		}
	}
	if len(probs) > 0 {
		return onfailure.Errorf(onfailure.Unknown, "%s", strings.Join(probs, "; "))
	}
	return nil
}

// project returns the project of name, with its file in its project
// directory under r.Dir.
func (r *Runner) project(cli []string, name string) project {
	root := r.Dir
	if root == "" {
		root = DefaultDir
	}
	dir := filepath.Join(root, name)
	return project{cli: cli, name: name, file: filepath.Join(dir, FileName), dir: dir}
}

// Run installs the step's compose file as its project and brings the
// project up, as the package doc says: it validates the new file and
// journals the undo data before it changes anything.
func (r *Runner) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	if s == nil || s.Compose == nil {
		return onfailure.Errorf(onfailure.Unknown, "not a compose step")
	}
	c := s.Compose
	if env == nil || env.SaveUndo == nil {
		return onfailure.Errorf(onfailure.Unknown, "compose step %q: no way to journal undo data", s.Name)
	}
	if r.Engine == nil {
		return onfailure.Errorf(onfailure.Unknown, "compose step %q: no Docker engine configured", s.Name)
	}
	if !projectRE.MatchString(c.Project) {
		return onfailure.Errorf(onfailure.Unknown, "compose step %q: project %q must match %s", s.Name, c.Project, projectRE)
	}

	// 1. The daemon answers.
	if err := r.ping(ctx); err != nil {
		return err
	}
	cli, err := r.command(ctx)
	if err != nil {
		return err
	}
	p := r.project(cli, c.Project)

	// 2. The new file, staged and validated.
	src, err := file.InRoot(env.Root, c.File)
	if err != nil {
		return onfailure.Wrap("compose file "+c.File, err)
	}
	content, err := readFile(src)
	if err != nil {
		return onfailure.Wrap("compose file "+c.File, err)
	}
	if env.WorkDir == "" {
		return onfailure.Errorf(onfailure.Unknown, "compose step %q: no work directory", s.Name)
	}
	staged := p
	staged.file = filepath.Join(env.WorkDir, "staged-"+FileName)
	if err := os.WriteFile(staged.file, content, FileMode); err != nil {
		return onfailure.Wrap("stage compose file "+c.File, err)
	}
	svcs, err := r.config(ctx, env, staged)
	if err != nil {
		if ctx.Err() != nil || onfailure.KindOf(err) != onfailure.Unknown {
			return err
		}
		return fmt.Errorf("compose file %s is invalid: %w", c.File, err)
	}
	if err := checkServices(c.File, svcs); err != nil {
		return err
	}
	archives := make([]string, len(c.Images))
	for i, a := range c.Images {
		if archives[i], err = file.InRoot(env.Root, a); err != nil {
			return onfailure.Wrap("image archive "+a, err)
		}
	}

	// 3. The undo data, journaled before anything changes.
	if _, err := r.prepareUndo(ctx, env, p); err != nil {
		return err
	}

	// 4. The images.
	for i, a := range archives {
		logf(env, "loading image archive %s", c.Images[i])
		if err := r.Engine.LoadImage(ctx, a); err != nil {
			return engineErr(ctx, "load image archive "+c.Images[i], err)
		}
	}
	for _, img := range svcs.images() {
		_, err := r.Engine.ImageID(ctx, img)
		if err == nil {
			continue
		}
		if !errors.Is(err, containers.ErrNotFound) {
			return engineErr(ctx, "look up image "+img, err)
		}
		logf(env, "pulling %s", img)
		if err := r.Engine.PullImage(ctx, img); err != nil {
			return engineErr(ctx, "pull "+img, err)
		}
	}

	// 5. The project file.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("compose step stopped before installing %s: %w", p.file, context.Cause(ctx))
	}
	if err := install(p, content); err != nil {
		return err
	}
	logf(env, "installed %s", p.file)

	// 6. Up, and 7. the health wait.
	if err := r.run(ctx, env, p, nil, "up", "-d", "--remove-orphans"); err != nil {
		return err
	}
	return r.wait(ctx, env, p, svcs.names(), c.WaitHealthy)
}

// checkServices refuses a project with no services or a service without
// an image.
func checkServices(name string, svcs services) error {
	if len(svcs) == 0 {
		return onfailure.Errorf(onfailure.Unknown, "compose file %s defines no services", name)
	}
	var noImage []string
	for _, n := range svcs.names() {
		if svcs[n] == "" {
			noImage = append(noImage, n)
		}
	}
	if len(noImage) > 0 {
		return onfailure.Errorf(onfailure.Unknown,
			"compose file %s: service %s has no image: devices do not build images; give every service an image (loaded from images or pulled)",
			name, strings.Join(noImage, ", "))
	}
	return nil
}

// prepareUndo returns the undo data of the step: Env.Undo's when an
// earlier attempt journaled it, else the state of the project now, which
// it journals (after backing up the project file) before returning.
func (r *Runner) prepareUndo(ctx context.Context, env *steps.Env, p project) (*undoData, error) {
	if env.Undo != nil {
		u, err := decodeUndo(env.Undo)
		if err != nil {
			return nil, onfailure.E(onfailure.Unknown, "compose step", err)
		}
		logf(env, "keeping the undo data of the first attempt (previous file %s)", presence(u.Existed))
		return u, nil
	}
	u := &undoData{Version: UndoVersion, Project: p.name, File: p.file}
	prev, err := readProjectFile(p.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, onfailure.Wrap("read the project file", err)
	default:
		u.Existed, u.Backup = true, backupName
		if err := file.Install(filepath.Join(env.WorkDir, backupName), bytes.NewReader(prev), FileMode); err != nil {
			return nil, onfailure.Wrap("back up "+p.file, err)
		}
		if u.Images, err = r.previousImages(ctx, env, p, prev); err != nil {
			return nil, err
		}
	}
	data, err := json.Marshal(u)
	if err != nil {
		return nil, onfailure.E(onfailure.Unknown, "encode compose undo data", err)
	}
	if err := env.SaveUndo(data); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("journal compose undo data: %w", context.Cause(ctx))
		}
		return nil, onfailure.Wrap("journal compose undo data", err)
	}
	return u, nil
}

// previousImages returns, for the project as it is, the id of every image
// reference it uses: the local id of each image its file names, and, over
// those, the id each of its containers runs, by the reference the
// container was created from. The file's images are read as written; only
// a file whose images use variables, or that has a service without an
// image (extends), is read through "config".
func (r *Runner) previousImages(ctx context.Context, env *steps.Env, p project, prev []byte) (map[string]string, error) {
	svcs, err := parseConfig(prev)
	if err != nil || svcs.needConfig() {
		cfg, cerr := r.config(ctx, env, p)
		switch {
		case cerr == nil:
			svcs = cfg
		case ctx.Err() != nil || onfailure.KindOf(cerr) == onfailure.Connectivity:
			return nil, cerr
		default:
			// The running file no longer validates (its environment
			// changed?): keep what it says as written.
			logf(env, "cannot read the images of %s: %v", p.file, cerr)
		}
	}
	images := map[string]string{}
	for _, ref := range svcs.images() {
		if !retaggable(ref) || strings.Contains(ref, "$") {
			continue
		}
		id, err := r.Engine.ImageID(ctx, ref)
		switch {
		case errors.Is(err, containers.ErrNotFound) && ctx.Err() == nil:
			continue
		case err != nil:
			return nil, engineErr(ctx, "look up image "+ref, err)
		}
		images[ref] = id
	}
	cs, err := r.Engine.ProjectContainers(ctx, p.name)
	if err != nil {
		return nil, engineErr(ctx, "list the containers of project "+p.name, err)
	}
	for _, c := range cs {
		if retaggable(c.ImageRef) && strings.HasPrefix(c.Image, "sha256:") {
			images[c.ImageRef] = c.Image
		}
	}
	if len(images) == 0 {
		return nil, nil
	}
	return images, nil
}

// Undo puts the project back as undo (journaled by Run) describes it, as
// the package doc says: the previous file, its image tags, and the project
// up and healthy; or, if there was no previous file, the project down and
// its file removed. Running it again gives the same result.
func (r *Runner) Undo(ctx context.Context, s *flow.Step, env *steps.Env, undo []byte) error {
	u, err := decodeUndo(undo)
	if err != nil {
		return onfailure.E(onfailure.Unknown, "revert compose file", err)
	}
	if r.Engine == nil {
		return onfailure.Errorf(onfailure.Unknown, "revert compose file: no Docker engine configured")
	}
	var window time.Duration
	if s != nil && s.Compose != nil {
		window = s.Compose.WaitHealthy
	}
	if err := r.ping(ctx); err != nil {
		return err
	}
	cli, err := r.command(ctx)
	if err != nil {
		return err
	}
	dir := filepath.Dir(u.File)
	p := project{cli: cli, name: u.Project, file: u.File, dir: dir}
	if u.Existed {
		return r.restore(ctx, env, p, u, window)
	}
	return r.remove(ctx, env, p)
}

// restore puts the previous file back, re-tags its images and brings the
// project up with it.
func (r *Runner) restore(ctx context.Context, env *steps.Env, p project, u *undoData, window time.Duration) error {
	if env == nil || env.WorkDir == "" {
		return onfailure.Errorf(onfailure.Unknown, "revert compose file: no work directory to read the backup from")
	}
	prev, err := readFile(filepath.Join(env.WorkDir, u.Backup))
	if err != nil {
		return onfailure.Wrap("revert compose file: backup", err)
	}
	cur, err := readProjectFile(p.file)
	if err != nil || !bytes.Equal(cur, prev) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("revert compose file stopped: %w", context.Cause(ctx))
		}
		if err := install(p, prev); err != nil {
			return err
		}
		logf(env, "restored %s", p.file)
	}
	for _, ref := range slices.Sorted(maps.Keys(u.Images)) {
		id := u.Images[ref]
		now, err := r.Engine.ImageID(ctx, ref)
		switch {
		case err == nil && now == id:
			continue
		case err != nil && (ctx.Err() != nil || !errors.Is(err, containers.ErrNotFound)):
			return engineErr(ctx, "look up image "+ref, err)
		case err != nil:
			now = "nothing"
		}
		if err := r.Engine.TagImage(ctx, id, ref); err != nil {
			return engineErr(ctx, fmt.Sprintf("tag %s back to %s", ref, id), err)
		}
		logf(env, "tagged %s back to %s (it was %s)", ref, id, now)
	}
	svcs, err := r.config(ctx, env, p)
	if err != nil {
		return err
	}
	if err := r.run(ctx, env, p, nil, "up", "-d", "--remove-orphans"); err != nil {
		return err
	}
	return r.wait(ctx, env, p, svcs.names(), window)
}

// remove takes the project down and removes its file and, if empty, its
// directory.
func (r *Runner) remove(ctx context.Context, env *steps.Env, p project) error {
	if _, err := os.Lstat(p.file); err == nil {
		if err := r.run(ctx, env, p, nil, "down", "--remove-orphans"); err != nil {
			if ctx.Err() != nil || onfailure.KindOf(err) == onfailure.Connectivity {
				return err
			}
			logf(env, "compose down failed, removing the project's containers directly: %v", err)
		}
	}
	cs, err := r.Engine.ProjectContainers(ctx, p.name)
	if err != nil {
		return engineErr(ctx, "list the containers of project "+p.name, err)
	}
	for _, c := range cs {
		if err := r.Engine.Remove(ctx, c.ID); err != nil {
			return engineErr(ctx, "remove container "+c.Name, err)
		}
		logf(env, "removed container %s", c.Name)
	}
	if err := os.Remove(p.file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return onfailure.Wrap("remove "+p.file, err)
	}
	if err := os.Remove(p.dir); err != nil && !errors.Is(err, fs.ErrNotExist) &&
		!errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return onfailure.Wrap("remove "+p.dir, err)
	}
	_ = file.SyncDir(filepath.Dir(p.dir))
	logf(env, "removed %s", p.file)
	return nil
}

// wait waits for the project's services to be ready (containers.Wait).
func (r *Runner) wait(ctx context.Context, env *steps.Env, p project, names []string, window time.Duration) error {
	o := r.Health
	o.Expect = names
	if window > 0 {
		o.Window = window
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	poll := func(ctx context.Context) ([]containers.Container, error) {
		cs, err := r.Engine.ProjectContainers(ctx, p.name)
		if err != nil {
			return nil, engineErr(ctx, "list the containers of project "+p.name, err)
		}
		out := cs[:0:0]
		for _, c := range cs {
			if want[c.Service] {
				out = append(out, c)
			}
		}
		return out, nil
	}
	logf(env, "waiting for %s to be healthy", strings.Join(names, ", "))
	if err := containers.Wait(ctx, poll, o, nil); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("project %s: %w", p.name, err)
		}
		return onfailure.Wrap("project "+p.name, err)
	}
	logf(env, "project %s is up", p.name)
	return nil
}

// ping checks that the daemon answers: Connectivity when it does not.
func (r *Runner) ping(ctx context.Context) error {
	err := r.Engine.Ping(ctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("ping docker daemon: %w", context.Cause(ctx))
	case onfailure.KindOf(err) == onfailure.Unknown:
		return onfailure.E(onfailure.Connectivity, "docker daemon does not answer", err)
	}
	return onfailure.Wrap("docker daemon does not answer", err)
}

// engineErr wraps an Engine error: with the context's cause when the
// context has ended, else keeping the engine's kind.
func engineErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	return onfailure.Wrap(op, err)
}

// install writes the project file atomically, creating the project
// directory (DirMode) first.
func install(p project, content []byte) error {
	if err := os.MkdirAll(filepath.Dir(p.dir), DirMode); err != nil {
		return onfailure.Wrap("create "+filepath.Dir(p.dir), err)
	}
	switch err := os.Mkdir(p.dir, DirMode); {
	case err == nil:
		if err := os.Chmod(p.dir, DirMode); err != nil {
			return onfailure.Wrap("create "+p.dir, err)
		}
		if err := file.SyncDir(filepath.Dir(p.dir)); err != nil {
			return onfailure.Wrap("create "+p.dir, err)
		}
	case !errors.Is(err, fs.ErrExist):
		return onfailure.Wrap("create "+p.dir, err)
	}
	if err := file.Install(p.file, bytes.NewReader(content), FileMode); err != nil {
		return onfailure.Wrap("install "+p.file, err)
	}
	return nil
}

// readFile reads a file of at most MaxFileSize bytes.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxFileSize)
	}
	return data, nil
}

// readProjectFile reads the installed project file, refusing anything but
// a regular file; a missing file is an error wrapping fs.ErrNotExist.
func readProjectFile(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return readFile(path)
}

func presence(existed bool) string {
	if existed {
		return "existed"
	}
	return "did not exist"
}
