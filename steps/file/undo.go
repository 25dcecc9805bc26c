package file

import (
	"encoding/json"
	"fmt"
	"path/filepath"
)

// UndoVersion is the version of the undo data this package writes and
// reads. Data of another version is refused, never guessed at.
const UndoVersion = 1

// undoData is the undo data of one file step, journaled as JSON (see the
// package doc for the format).
type undoData struct {
	Version int          `json:"version"`
	Files   []fileRecord `json:"files"`
	Dirs    []string     `json:"dirs,omitempty"`
}

// fileRecord is the state of one destination before the step's first
// attempt.
type fileRecord struct {
	// Dest is the entry's dest, cleaned.
	Dest string `json:"dest"`
	// Path is the real path written: Dest with symbolic links resolved.
	Path string `json:"path"`
	// Existed says whether Path held a file; Previous is set exactly then.
	Existed  bool      `json:"existed"`
	Previous *previous `json:"previous,omitempty"`
}

// previous is a file as it was: a copy of its content and its attributes.
type previous struct {
	// Backup is the copy's path relative to the step's work directory,
	// such as "backups/0".
	Backup string `json:"backup"`
	// Mode is the octal mode, setuid, setgid and sticky included ("0644").
	Mode string `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
}

// decodeUndo parses undo data; nil or empty data is an empty record.
func decodeUndo(data []byte) (*undoData, error) {
	u := &undoData{Version: UndoVersion}
	if len(data) == 0 {
		return u, nil
	}
	if err := json.Unmarshal(data, u); err != nil {
		return nil, fmt.Errorf("file step undo data: %w", err)
	}
	if u.Version != UndoVersion {
		return nil, fmt.Errorf("file step undo data has version %d; this agent reads version %d", u.Version, UndoVersion)
	}
	for i, f := range u.Files {
		if !absClean(f.Path) {
			return nil, fmt.Errorf("file step undo data: file %d: path %q is not absolute and clean", i, f.Path)
		}
		if f.Existed != (f.Previous != nil) {
			return nil, fmt.Errorf("file step undo data: %s: existed is %v but previous is %s", f.Path, f.Existed, presence(f.Previous != nil))
		}
		if p := f.Previous; p != nil {
			if !filepath.IsLocal(p.Backup) {
				return nil, fmt.Errorf("file step undo data: %s: backup %q is not a path inside the work directory", f.Path, p.Backup)
			}
			if _, err := parseMode(p.Mode); err != nil {
				return nil, fmt.Errorf("file step undo data: %s: %w", f.Path, err)
			}
			if p.UID < 0 || p.GID < 0 {
				return nil, fmt.Errorf("file step undo data: %s: negative uid or gid", f.Path)
			}
		}
	}
	for _, d := range u.Dirs {
		if !absClean(d) || d == "/" {
			return nil, fmt.Errorf("file step undo data: directory %q is not absolute and clean", d)
		}
	}
	return u, nil
}

func absClean(p string) bool { return filepath.IsAbs(p) && filepath.Clean(p) == p }

func presence(set bool) string {
	if set {
		return "set"
	}
	return "missing"
}

// hasFile reports whether u already records path.
func (u *undoData) hasFile(path string) bool {
	for _, f := range u.Files {
		if f.Path == path {
			return true
		}
	}
	return false
}

// addDir records that the step creates dir, once.
func (u *undoData) addDir(dir string) {
	for _, d := range u.Dirs {
		if d == dir {
			return
		}
	}
	u.Dirs = append(u.Dirs, dir)
}
