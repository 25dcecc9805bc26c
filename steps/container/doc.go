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
//     (Runner.Grace, then killed), clone it to NAME on the new image (the
//     clone keeps its restart policy), set the previous container's
//     restart policy to "no" (see Restart policy), start the clone, and
//     wait for it with containers.Wait (window: waitHealthy, default
//     containers.DefaultWindow). An unhealthy health check, a crash loop
//     or an exit fail at once with kind Verification; a window that runs
//     out is Timeout. Each step writes a line to Env.Log.
//
// On a later attempt, or when the agent runs the step again after a
// restart (Env.Undo set), Run keeps the journaled previous container and
// its recorded restart policy: it removes a container that holds NAME and
// is not the previous one (the clone of the interrupted attempt), and goes
// on from step 4, where it gives the clone the recorded policy before
// setting the previous container's to "no" (an earlier attempt may have
// set "no" already, and Clone copied it). A flow whose earlier attempt
// never journaled starts from step 1.
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
//	  "aside": "api.edgeflow-prev-0d3e5a7c",
//	  "restartPolicy": {"name": "on-failure", "maxRetries": 3}
//	}
//
// restartPolicy is the previous container's restart policy before the
// step: name is "no", "always", "on-failure" or "unless-stopped";
// maxRetries, only with on-failure, is left out when zero (no cap). It was
// added without a version bump: undo data without it (journaled by an
// agent that did not record it) means the policy is unknown, and Run and
// Undo then leave the previous container's policy as it is, as that agent
// did. Data of another version is refused.
//
// # Undo and Finish
//
// Undo removes the container holding NAME if it is not the previous one,
// renames the previous container back to NAME, sets its restart policy
// back to the recorded one if it differs, and, if it was running before
// the step, starts it and waits for it to be healthy as Run waits for the
// new one. A previous container that no longer exists fails Undo.
//
// Finish, called once the flow has ended whatever its outcome, removes the
// previous container if it is still under its aside name and another
// container holds NAME; a previous container that was restored, or that
// is the only one left, is kept (the latter with restart policy "no"; the
// undo data has its own).
//
// # Restart policy
//
// The Docker daemon, when it starts (a reboot step later in the flow, a
// power cut), starts again every container whose restart policy says so,
// stopped or not: "always" always, "on-failure" if it had exited non-zero
// (a stop that had to kill), "unless-stopped" unless it was stopped by
// hand. A previous container kept aside under its old policy would then
// run beside the new one until Finish, conflicting on published ports or
// doing the work twice. So Run sets the previous container's policy to
// "no" once the clone exists (Clone copies the policy from it, so not
// before), and Undo puts the recorded policy back before it starts the
// container. A container whose policy was already "no" is not touched.
//
// # Crashes
//
// Every change Run makes is one engine call, each idempotent, made after
// the undo data is journaled, and each leaves a state Undo handles: the
// previous container under NAME or aside, running or stopped, with its
// own restart policy or "no"; no clone, a created one, or a running one
// under NAME. So a kill at any point of Run (tested by cutting a Run off
// after each of its engine calls in turn), followed by Undo after the
// restart, gives back the previous container under NAME, running its old
// image, with its recorded restart policy and no clone left; a later
// attempt from any such point gives the new container the recorded
// policy. Undo and Finish are just as idempotent and may run again after
// a kill of their own.
//
// Between the stop and the policy change the previous container still
// has its own policy, so a power cut in that short window can have the
// daemon start it, aside, at boot; the clone is not started yet. The
// step then fails with AgentRestart, and Undo or a later attempt handles
// the running previous container like any other state above.
package container
