package compose

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
)

// UndoVersion is the version of the undo data this package writes and
// reads. Data of another version is refused, never guessed at.
const UndoVersion = 1

// backupName is the name, in the step's work directory, of the copy of the
// project file as it was before the step's first attempt.
const backupName = "previous-compose.yaml"

// undoData is the undo data of one compose step, journaled as JSON (see
// the package doc for the format).
type undoData struct {
	Version int    `json:"version"`
	Project string `json:"project"`
	// File is the project file's absolute path; its directory is the
	// project directory.
	File string `json:"file"`
	// Existed says whether File existed; Backup is set exactly then.
	Existed bool `json:"existed"`
	// Backup is the copy of the previous file, relative to the step's
	// work directory.
	Backup string `json:"backup,omitempty"`
	// Images maps each image reference the project used before the step
	// to the image id it used.
	Images map[string]string `json:"images,omitempty"`
}

// decodeUndo parses and checks undo data.
func decodeUndo(data []byte) (*undoData, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("compose step undo data is empty")
	}
	u := &undoData{}
	if err := json.Unmarshal(data, u); err != nil {
		return nil, fmt.Errorf("compose step undo data: %w", err)
	}
	if u.Version != UndoVersion {
		return nil, fmt.Errorf("compose step undo data has version %d; this agent reads version %d", u.Version, UndoVersion)
	}
	if !projectRE.MatchString(u.Project) {
		return nil, fmt.Errorf("compose step undo data: project %q is not a valid project name", u.Project)
	}
	if !filepath.IsAbs(u.File) || filepath.Clean(u.File) != u.File || filepath.Dir(u.File) == "/" {
		return nil, fmt.Errorf("compose step undo data: file %q is not an absolute, clean path below a project directory", u.File)
	}
	if u.Existed != (u.Backup != "") {
		return nil, fmt.Errorf("compose step undo data: existed is %v but backup is %q", u.Existed, u.Backup)
	}
	if u.Existed && !filepath.IsLocal(u.Backup) {
		return nil, fmt.Errorf("compose step undo data: backup %q is not a path inside the work directory", u.Backup)
	}
	for ref, id := range u.Images {
		if ref == "" || !strings.HasPrefix(id, "sha256:") {
			return nil, fmt.Errorf("compose step undo data: image %q has id %q, which is not a sha256 image id", ref, id)
		}
	}
	return u, nil
}

// retaggable reports whether ref is an image reference a tag can be
// pointed at: not an image id, not a digest reference.
func retaggable(ref string) bool {
	return ref != "" && !strings.HasPrefix(ref, "sha256:") && !strings.Contains(ref, "@")
}
