// Package controller is edgeflow's controller: it keeps the fleet's
// devices (from their presence), the uploaded bundles and the deployments
// (with their rollouts), sends dispatches, cancels, guidance and
// mark-failed to agents over MQTT, ingests the agents' events in order and
// acknowledges them, and serves the REST API of controller/api (Handler)
// with a live feed per deployment.
//
// A Controller does not own its connections: the caller gives it a store
// (controller/store), something to publish with (the MQTT client), and
// feeds it the messages the client receives (Run). Serve wires the whole
// `edgeflow serve` process: store, embedded or external broker, MQTT
// client, ingestion and HTTP server.
//
// # Ingestion
//
// Run reads the client's messages in batches. Per device, events are
// processed strictly in seq order: a seq at or below the device's last
// processed one is a duplicate (acknowledged again, never applied twice);
// the next seq is stored and applied; a later one is a gap and is dropped
// without an ack (the agent sends unacknowledged events again, in order).
// A batch is committed to the store in one transaction, then the
// controller publishes one cumulative ack per device (transport.Ack with
// the device's last processed seq), and only then acknowledges the MQTT
// messages to the broker. A crash anywhere in between loses nothing: the
// broker or the agent sends again what was not acknowledged, and what was
// already stored is recognized by its seq. A presence that names a new
// event stream (presence.stream: a reinstalled agent, whose seq starts
// again at 1) makes the controller forget the device's last seq.
//
// # A device's run of a deployment
//
// Each device of a deployment has a run. The agent's events move it:
//
//	   rollout: Waiting ──the schedule──┐   no rollout: dispatched by Create
//	   (no dispatch yet)  dispatches it │           │
//	    │ cancel  │ abort tripped       │           │
//	    ▼         ▼                     │           │
//	Cancelled   Skipped                 ▼           ▼
//	        dispatch stored, then published (sent again with the
//	        same id on every reconnect and when the device comes online)
//	                             │
//	                             ▼
//	    ┌─────────────────── Pending ─────────────rejected────────────► Rejected
//	    │ cancel                │  │                                       ▲
//	    ▼                       │  └──queued──► Queued ────rejected────────┘
//	Cancelled ◄─────────────────┼───cancel────── │
//	    │                       │                │
//	    │ any report from       │ accepted, step-started, step-finished,
//	    │ the device (as from   │ rollback-action, paused, flow-finished
//	    │ Pending)              ▼                ▼
//	    └──────────────────► Running ◄───────────┘
//	                           │  ▲
//	                     paused│  │resumed
//	                           ▼  │
//	                          Paused
//	                           │
//	                           │ flow-finished (from Running or Paused)
//	                           ▼
//	      Succeeded | Failed | Aborted | RolledBack | RollbackFailed | ...
//
//	Paused ──guide Exclude──► Excluded
//	Pending, Queued, Running, Paused ──rollout deviceTimeout──► TimedOut
//	Succeeded ──rollbackOnAbort: rollback sent──► RollingBack
//	RollingBack ──rolled-back──► RolledBack | RollbackFailed (also refused: Failed)
//	RollingBack ──rollout deviceTimeout after the rollback──► RollbackFailed
//
// step-started, step-finished and rollback-action events fill the run's
// steps and rollback actions. A run that has finished (Rejected or a
// flow-finished status) stays as it is: a later event is stored but
// changes nothing, so an agent that reports a dispatch's state again after
// a re-dispatch does not move a run back. Cancelled is the exception: the
// controller set it without hearing from the device (a cancel of a
// Pending or Queued run), so a report from the device still moves the run
// on; only a rejected of kind UserMarkedFailure (the agent confirming that
// it dropped the dispatch) leaves it Cancelled. A cancel of a Running or
// Paused run waits for the agent's flow-finished. Excluded (an operator's
// Exclude guidance), TimedOut (the rollout's deviceTimeout passed since
// the dispatch; the device gets a cancel) and Skipped (the rollout
// aborted before the device's turn) are set by the controller and final:
// the device's later reports are stored but do not move them. A
// RollingBack run (a Succeeded device sent a rollback on abort) has
// finished its flow and takes only its rollback's events: rollback
// actions and rollback steps, then rolled-back; it never counts twice for
// the abort threshold (it stays judged as the success it was).
//
// # A deployment
//
//	Running ◄──────────► Paused    waits: for a promotion, the end of a pause
//	   │                   │       between waves, or guidance of a Paused run
//	   └──every run finished──┬─► Succeeded   every run Succeeded (or Excluded)
//	                          ├─► Failed      any other mix
//	                          ├─► Cancelled   an operator cancelled it
//	                          ├─► Aborted     the rollout's abort threshold tripped
//	                          └─► RollingBack tripped with rollbackOnAbort: the
//	                                 │        Succeeded devices were sent a rollback
//	                                 │ every rollback answered (or timed out)
//	                                 ├─► RolledBack  every one rolled back cleanly
//	                                 └─► Aborted     one could not, failed or timed out
//
// A deployment's status is final once every run has finished, and stays
// final: later events still update runs and counts. Each change appends
// an api.Event to the deployment's feed (stored, with a per-deployment
// Seq) and wakes the feed's watchers without blocking ingestion.
//
// # Rollouts
//
// A deployment with a rollout starts its devices in waves (cumulative
// targets, in device id order), at most maxInFlight at a time, with a
// pause or a promotion between waves, and stops starting devices when its
// abort threshold trips. The scheduler (work.advance) runs in the same
// unit of work as whatever may let the rollout go on — an agent's event,
// an operator's request (create, promote, guide, cancel), a timer — so its
// decisions are committed with their cause. Its state is all in the
// store (each run's wave, dispatch time and deadline; the deployment's
// wave, cursor, pause, abort and tally); the timers (one per deployment,
// for a pause's end or a device's deadline) are armed again from it when
// Run starts. With rollbackOnAbort, once the threshold has tripped and
// every run has finished its flow, advance sends a rollback (a pending
// command, like a dispatch) to every Succeeded device whose presence lists
// the command. docs/rollouts.md has the whole story.
//
//	wave:  Waiting ──started──► Running ──its runs and earlier ones finished──► Finished
//	next:  Finished ──pause ""──► start   ──pause D──► start at finished+D
//	                ──pause manual──► awaitingPromotion ──promote──► start
//
// Operators' requests (guide, mark-failed, cancel, promote, retry) are
// recorded in the deployment's audit in the same commit, as is the
// controller's own rollback on abort (by "controller").
package controller
