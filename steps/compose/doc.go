// Package compose runs compose steps (spec 2): it installs a Docker Compose
// file as the file of a project, loads the step's image archives, brings
// the project up and waits for its services to be healthy; it journals the
// project's previous file and images first, and its Undo (the
// revertComposeFile action of spec 6) puts them back.
//
// # The project
//
// A project's file lives at Runner.Dir/<project>/compose.yaml (Dir
// defaults to /var/lib/edgeflow/compose); that directory is the project
// directory, where the CLI reads .env and resolves relative paths
// (volumes, env_file). Only the compose file is installed: files it refers
// to by relative path belong in file steps. The project directory is
// created with mode 0755, the file written with mode 0600 (it may hold
// credentials). Every command runs as
//
//	<cli> -p <project> -f <file> --project-directory <dir> <subcommand>
//
// where <cli> is Runner.Command, or the Compose CLI Detect finds: the
// docker compose v2 plugin when "docker compose version" exits 0, else
// docker-compose (v1). The CLI runs through script.Exec, in its own process
// group, which is stopped (SIGTERM, SIGKILL after Runner.Grace) when the
// step's context ends; its output goes to Env.Log.
//
// # Run
//
// Run stages first and touches the running project last, so that bad
// input changes nothing:
//
//  1. Engine.Ping: a daemon that does not answer is Connectivity.
//  2. The step's file is read from Env.Root (resolved inside it with
//     securejoin), copied to Env.WorkDir and validated there with
//     "config" (as the project, in its project directory). An invalid file
//     fails with the CLI's message (kind Unknown). The services and their
//     images are read from the output of "config"; a service without an
//     image is refused (devices do not build images), as is a file without
//     services. Services in profiles that COMPOSE_PROFILES (in the agent's
//     environment) does not enable are left out, as up does not start
//     them. Every image archive must be a regular file inside Root.
//  3. The undo data is recorded and journaled with Env.SaveUndo: whether
//     the project file existed and, if it did, a backup copy of it in
//     Env.WorkDir, and the image id of every image reference the project
//     used: the local id of each image its file names (read as written,
//     or with "config" when an image uses variables or a service has no
//     image of its own), and over those the id each of its containers
//     runs (Engine.ProjectContainers), by the reference the container was
//     created from. This comes before the images are loaded, since
//     loading an archive may move a tag the project uses, and a crash
//     between the load and the journal would lose where it pointed.
//  4. Each archive of images is loaded (Engine.LoadImage); then every
//     service image still missing locally is pulled (Engine.PullImage).
//  5. The file is installed at the project's path atomically (file.Install:
//     a temporary file, fsync, rename, fsync of the directory).
//  6. "up -d --remove-orphans".
//  7. containers.Wait, expecting every service, polling the project's
//     containers, within waitHealthy (Runner.Health.Window, else
//     containers.DefaultWindow, when the step sets none): an unhealthy
//     container, a crash loop or an exited container fails the step with
//     Verification at once; a window that runs out with Timeout.
//
// A failing CLI command is classified without reading its output: the
// daemon is pinged again, and Connectivity is the verdict when it does not
// answer; otherwise the kind is Unknown and the message gives the exit
// status and the CLI's last line of output (for "config", the last lines of
// its stderr). Engine errors keep the kind the engine gave them (a refused
// registry login is Authentication, and so on). When the step's context
// ends, Run stops between operations, or stops the running CLI, and returns
// an error wrapping context.Cause.
//
// # Undo data
//
// The undo data is JSON, version UndoVersion:
//
//	{
//	  "version": 1,
//	  "project": "web",
//	  "file": "/var/lib/edgeflow/compose/web/compose.yaml",
//	  "existed": true,
//	  "backup": "previous-compose.yaml",
//	  "images": {"example/web:current": "sha256:4f1c..."}
//	}
//
// "backup" is set exactly when "existed" is true, relative to the step's
// Env.WorkDir. "images" maps image references to the ids the project used
// before the step; image ids and digest references are left out, as no tag
// can be put back on them. Data of another version is refused.
//
// On a later attempt, or when the step runs again after an agent restart
// (Env.Undo set), Run keeps Env.Undo as it is: it describes the project
// before the first attempt, whose file may by now be the new one. The
// backup is not written again.
//
// # Undo
//
// Undo works from the undo data alone, so it runs after an agent restart,
// and is idempotent: after a crash at any point of Run or of an earlier
// Undo, running it again gives the same result.
//
// If the project had a file: the backup is put back at the recorded path
// atomically (unless the file already holds it); each recorded image
// reference that now points at another image, or at none, is tagged back
// to its recorded id (Engine.TagImage; an image that is gone fails the
// undo before the project is touched); the restored file is read with
// "config" for its services; "up -d --remove-orphans" brings the project
// back; and the health wait runs as in Run, within the step's waitHealthy.
//
// If it had none: "down --remove-orphans" takes the project down with the
// installed file, if it is there; any container of the project still
// present (all of them, if the file is gone) is removed through the
// engine; then the file is removed, and the project directory if it is
// empty. Named volumes are kept. A project brought down without its file
// may leave its network behind.
//
// # What the device needs
//
// A Docker engine the Engine reaches, and a Compose CLI: the docker compose
// v2 plugin or docker-compose v1 (1.28 or later, for --project-directory
// and .env read from it), on PATH. Registries are needed only for images
// that are neither present nor in the step's archives.
package compose
