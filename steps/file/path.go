package file

import (
	"errors"
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/edgeflow/edgeflow/onfailure"
)

// allowedRoot is one of Runner.AllowPaths: as configured (cleaned) and
// with its own symbolic links resolved.
type allowedRoot struct {
	path string
	real string
}

// allowedRoots returns the runner's allowed roots, nil when every path is
// allowed.
func (r *Runner) allowedRoots() ([]allowedRoot, error) {
	var out []allowedRoot
	for _, p := range r.AllowPaths {
		if !filepath.IsAbs(p) {
			return nil, onfailure.Errorf(onfailure.Unknown, "allowed path %q is not absolute", p)
		}
		c := filepath.Clean(p)
		real, err := realPath(c)
		if err != nil {
			return nil, onfailure.Wrap("resolve allowed path "+c, err)
		}
		out = append(out, allowedRoot{path: c, real: real})
	}
	return out, nil
}

// realPath resolves every symbolic link in the absolute, clean path p as
// the kernel would, the last component included. Components that do not
// exist are kept as written, and a dangling link is followed to where its
// target would be, so the result is where a file created at p would land.
func realPath(p string) (string, error) {
	return securejoin.SecureJoin("/", p)
}

// within reports whether p lies strictly below root.
func within(p, root string) bool {
	if root == "/" {
		return p != "/"
	}
	return strings.HasPrefix(p, root+"/")
}

func rootList(roots []allowedRoot) string {
	s := make([]string, len(roots))
	for i, r := range roots {
		s[i] = r.path
	}
	return strings.Join(s, ", ")
}

// resolveDest checks dest against the path rules of the package doc and
// returns it cleaned, and the real path the file is written at.
func resolveDest(dest string, roots []allowedRoot) (clean, real string, err error) {
	if dest == "" {
		return "", "", errors.New("no dest")
	}
	if !filepath.IsAbs(dest) {
		return "", "", errors.New("not an absolute path")
	}
	clean = filepath.Clean(dest)
	if len(roots) > 0 && !inside(clean, roots, false) {
		if clean != dest {
			return "", "", onfailure.Errorf(onfailure.Authorization,
				"is %s, outside the allowed paths %s", clean, rootList(roots))
		}
		return "", "", onfailure.Errorf(onfailure.Authorization,
			"outside the allowed paths %s", rootList(roots))
	}
	real, err = realPath(clean)
	if err != nil {
		return "", "", err
	}
	if len(roots) > 0 && !inside(real, roots, true) {
		return "", "", onfailure.Errorf(onfailure.Authorization,
			"resolves through a symbolic link to %s, outside the allowed paths %s", real, rootList(roots))
	}
	return clean, real, nil
}

func inside(p string, roots []allowedRoot, real bool) bool {
	for _, r := range roots {
		root := r.path
		if real {
			root = r.real
		}
		if within(p, root) {
			return true
		}
	}
	return false
}

// parseMode parses an octal mode such as "0644" or "4755".
func parseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("mode %q is not an octal file mode such as \"0644\"", s)
	}
	return uint32(m), nil
}

// owner is a parsed Owner: a user and an optional group, each a name or a
// number; "" keeps the current one.
type owner struct {
	user, group string
}

// parseOwner checks the form of an Owner: "user", "user:group" or
// "uid:gid". Names are looked up later, by lookup.
func parseOwner(s string) (owner, error) {
	if s == "" {
		return owner{}, nil
	}
	u, g, hasGroup := strings.Cut(s, ":")
	bad := func(part string) bool {
		return part == "" || strings.ContainsAny(part, ":/") ||
			strings.IndexFunc(part, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0
	}
	if bad(u) || (hasGroup && bad(g)) {
		return owner{}, fmt.Errorf("owner %q is not \"user\", \"user:group\" or \"uid:gid\"", s)
	}
	return owner{user: u, group: g}, nil
}

// lookup returns the uid and gid of o, -1 for a part that is not set. A
// number is taken as an id; anything else is looked up as a name.
func (o owner) lookup() (uid, gid int, err error) {
	uid, gid = -1, -1
	if o.user != "" {
		if uid, err = id(o.user); err != nil {
			var u *user.User
			if u, err = user.Lookup(o.user); err != nil {
				return -1, -1, fmt.Errorf("owner: %w", err)
			}
			if uid, err = id(u.Uid); err != nil {
				return -1, -1, fmt.Errorf("owner %s: uid %q: %w", o.user, u.Uid, err)
			}
		}
	}
	if o.group != "" {
		if gid, err = id(o.group); err != nil {
			var g *user.Group
			if g, err = user.LookupGroup(o.group); err != nil {
				return -1, -1, fmt.Errorf("owner: %w", err)
			}
			if gid, err = id(g.Gid); err != nil {
				return -1, -1, fmt.Errorf("owner group %s: gid %q: %w", o.group, g.Gid, err)
			}
		}
	}
	return uid, gid, nil
}

func id(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 31)
	return int(n), err
}
