// Package file runs file steps (spec 2): it installs each entry of a step,
// a src file from the flow's directory or bundle or inline content, at its
// dest atomically, with its mode and owner, after checking its sha256; it
// journals the previous state of every dest first, and its Undo (the
// revertFiles action of spec 6) puts that state back.
//
// # Paths
//
// A src is resolved inside Env.Root with securejoin: neither ".." nor a
// symbolic link takes it outside Root ("../../etc/passwd" is
// Root/etc/passwd). It must be a regular file.
//
// A dest must be absolute. It is cleaned lexically first, so
// "/allowed/../etc/x" is "/etc/x". Then every symbolic link in it, in its
// existing directories and in the dest itself, is resolved as the kernel
// would (a dangling link to where its target would be created), and the
// file is written at that real path: a dest that is a symbolic link keeps
// the link and replaces the file it points to. With Runner.AllowPaths set:
//
//   - the cleaned dest must lie below one of the allowed paths, and
//   - its real path must lie below one of the allowed paths, each with its
//     own symbolic links resolved (an allowed /var/run that links to /run
//     allows /run/...). A link that stays inside the allowed paths, even an
//     absolute one or one into another allowed path, is fine; a link that
//     leads out is refused.
//
// A refusal has kind onfailure.Authorization and names the dest and the
// allowed paths. With no AllowPaths every absolute dest is allowed, but
// links are still resolved and the file is written at its real path.
//
// Preflight, which the engine calls for every file step before the flow
// starts, refuses the same paths, a missing src, and a malformed mode,
// owner or sha256, changing nothing. It checks the device as it is then;
// Run checks again, since earlier steps may change it. Owner names are
// only looked up by Run, since an earlier step may create the user.
//
// # Run
//
// Run works in three phases, so that bad input changes nothing:
//
//  1. Check every entry: the path rules above, the owner lookup (os/user),
//     the inline content expanded with Env.Expand (spec 9), and, if sha256
//     is set, the content's digest (a src file is streamed). A mismatch
//     has kind onfailure.Integrity and gives the expected and the actual
//     digest. A dest that exists must be a regular file, and its nearest
//     existing parent a directory.
//  2. Record the undo data: for every dest, whether it existed and, if it
//     did, a backup copy in Env.WorkDir and its mode, uid and gid; and the
//     parent directories the step will create. Journal it with
//     Env.SaveUndo, once, before anything on the device changes.
//  3. Install the entries in order, stopping between entries (and inside a
//     long copy) when the context ends, with an error wrapping
//     context.Cause. Missing directories are created with mode DirMode
//     (0755) whatever the umask. The content goes to a temporary file
//     ".NAME.edgeflow-RANDOM" in the dest's directory, is hashed again on
//     the way when sha256 is set (in case src changed since phase 1), is
//     chowned, then chmoded (chown clears setuid), fsynced, and renamed over
//     the dest; then the directory is fsynced. On any error the temporary
//     file is removed and the dest keeps its old content.
//
// Mode is octal, such as "0644" or "4755"; empty keeps the replaced file's
// mode, or DefaultMode (0644) for a new file. Owner is "user",
// "user:group" or "uid:gid" (a number is an id, anything else a name);
// like chown(1), "user" alone changes the user and keeps the group. An
// empty part keeps the replaced file's, or the agent's for a new file.
//
// Errors carry an onfailure kind and start with the entry, as in
// "dest /etc/app.conf (src files/app.conf): ...". System errors are
// classified by errno (onfailure.Classify): a full disk (ENOSPC, EDQUOT) is
// ResourceExhausted, EACCES, EPERM and EROFS are Authorization.
//
// # Undo data
//
// The undo data is JSON, version UndoVersion:
//
//	{
//	  "version": 1,
//	  "files": [
//	    {"dest": "/etc/app/app.conf", "path": "/etc/app/app.conf", "existed": true,
//	     "previous": {"backup": "backups/0", "mode": "0644", "uid": 0, "gid": 0}},
//	    {"dest": "/etc/app/conf.d/env", "path": "/etc/app/conf.d/env", "existed": false}
//	  ],
//	  "dirs": ["/etc/app/conf.d"]
//	}
//
// "dest" is the entry's dest, cleaned; "path" the real path written.
// "previous" is set exactly when "existed" is true; its "backup" is
// relative to the step's Env.WorkDir. "dirs" are the directories the step
// created. Data of another version is refused.
//
// On a later attempt (Env.Undo set) Run keeps Env.Undo's records as they
// are: they describe the device before the first attempt, so a dest already
// recorded is not backed up again (its current content may be what the
// first attempt wrote). Only dests and directories not recorded yet are
// added, and the merged data is journaled before anything changes.
// Records are keyed by the real path, so two entries that reach the same
// file through a link share one record.
//
// # Undo
//
// Undo restores the recorded files in reverse order: a file that existed
// gets its backup's content back atomically (the same temporary file,
// rename and fsyncs as an install) with its recorded mode, uid and gid; a
// file that did not exist is removed (already gone is fine). Then the
// created directories are removed, deepest first, if they are empty. It
// never writes through a symbolic link that appeared in a recorded path
// after it was recorded. It carries on past a record it cannot restore and
// reports all of them. It is idempotent: it may run again after an agent
// restart. Backups are left in place; the engine removes Env.WorkDir when
// the flow ends.
package file
