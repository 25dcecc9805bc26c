// Package container runs container steps (spec 2): it replaces one
// container, called name, with a container of the same configuration on a
// new image, loaded from imageArchive in the flow's directory or bundle or
// pulled, and waits waitHealthy for it to be healthy. It keeps the previous
// container, stopped, under another name until the flow ends, so that its
// Undo (the restartPreviousContainer action of spec 6) can bring it back;
// Finish removes it once the flow has ended.
//
// It talks to the Docker engine only through containers.Engine
// (steps/docker implements it), so the configuration of the new container
// is containers.Engine.Clone's: the user's settings of the previous
// container (environment, ports, mounts, networks, restart policy, labels,
// command) with the new image's defaults for the rest.
//
// # Run
//
//  1. Ping the engine; inspect the container name, which must exist (a
//     container step updates a container, it does not create one).
//  2. Make the image present: load imageArchive (resolved inside Env.Root
//     with securejoin, so neither ".." nor a symbolic link leaves it), or
//     pull image if the engine does not have it. The image must then
//     resolve to an id, else the step fails naming the archive or image.
//     The step replaces the container even if it already runs that image.
//  3. Journal the undo data with Env.SaveUndo. Nothing has changed yet
//     (a loaded or pulled image is not undone).
//  4. Rename the previous container to its aside name,
//     NAME.edgeflow-prev-<first 8 characters of the execution id>, stop it
//     (Runner.Grace, then killed), clone it to NAME on the new image, start
//     the clone, and wait for it with containers.Wait (window: waitHealthy,
//     default containers.DefaultWindow). An unhealthy health check, a crash
//     loop or an exit fail at once with kind Verification; a window that
//     runs out is Timeout. Each step writes a line to Env.Log.
//
// On a later attempt, or when the agent runs the step again after a
// restart (Env.Undo set), Run keeps the journaled previous container: it
// removes a container that holds NAME and is not the previous one (the
// clone of the interrupted attempt), and goes on from step 4. A flow whose
// earlier attempt never journaled starts from step 1.
//
// # Undo data
//
// JSON, version UndoVersion:
//
//	{
//	  "version": 1,
//	  "name": "api",
//	  "previousId": "4f1c...",          // full container id
//	  "previousImage": "sha256:9a0b...", // the image it ran
//	  "running": true,                   // whether it was running
//	  "aside": "api.edgeflow-prev-0d3e5a7c"
//	}
//
// Data of another version is refused.
//
// # Undo and Finish
//
// Undo removes the container holding NAME if it is not the previous one,
// renames the previous container back to NAME, and, if it was running
// before the step, starts it and waits for it to be healthy as Run waits
// for the new one. A previous container that no longer exists fails Undo.
//
// Finish, called once the flow has ended whatever its outcome, removes the
// previous container if it is still under its aside name and another
// container holds NAME; a previous container that was restored, or that
// is the only one left, is kept.
//
// # Crashes
//
// Every change Run makes is one engine call, each idempotent, made after
// the undo data is journaled, and each leaves a state Undo handles: the
// previous container under NAME or aside, running or stopped; no clone, a
// created one, or a running one under NAME. So a kill at any point of Run
// (tested by cutting a Run off after each of its engine calls in turn),
// followed by Undo after the restart, gives back the previous container
// under NAME, running its old image, with no clone left. Undo and Finish
// are just as idempotent and may run again after a kill of their own.
//
// A previous container with restart policy "always" that sits stopped
// aside is started again by the Docker daemon when it restarts (a reboot
// during the flow); it then runs beside the new one until Finish removes
// it.
package container
