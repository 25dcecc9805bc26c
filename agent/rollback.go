package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// rollbackRequest is a rollback command waiting in the queue.
type rollbackRequest struct {
	By   string `json:"by,omitempty"`
	Note string `json:"note,omitempty"`
}

// rollback records and queues a new rollback command. A rollback seen
// before does nothing: its rolled-back event is (or will be) in the
// outbox, which is delivered until acknowledged.
func (d *Daemon) rollback(id string, b *transport.Rollback) error {
	seen := false
	err := d.j.Update(func(tx *journal.Tx) error {
		if tx.Command(id) != nil {
			seen = true
			return nil
		}
		if err := putCommand(tx, id, &command{Type: transport.TypeRollback, Deployment: b.Deployment, State: stateQueued}); err != nil {
			return err
		}
		data, err := json.Marshal(&queued{Dispatch: id, Deployment: b.Deployment,
			Rollback: &rollbackRequest{By: b.By, Note: b.Note}, Received: time.Now().UTC()})
		if err != nil {
			return err
		}
		_, err = tx.Enqueue(data)
		return err
	})
	if err != nil {
		return fmt.Errorf("journal rollback %s of deployment %s: %w", id, b.Deployment, err)
	}
	if seen {
		d.log.Info("rollback seen before; ignored", "deployment", b.Deployment, "id", id)
		return nil
	}
	d.log.Info("rollback queued", "deployment", b.Deployment, "id", id)
	wake(d.workWake)
	return nil
}

// runRollback undoes the deployment's execution for the rollback at the
// head of the queue, or carries on with one a restart cut off, or refuses
// it: the execution is not the device's last one, did not end Succeeded,
// or its undo data is gone.
func (d *Daemon) runRollback(ctx context.Context, q *queued) {
	d.setRunning(q, nil)
	defer d.setRunning(nil, nil)
	log := d.log.With("deployment", q.Deployment, "rollback", q.Dispatch)
	rec, exec, refusal, err := d.rollbackTarget(q.Deployment)
	if err != nil {
		log.Error("read the journal for a rollback", "error", err)
		return
	}
	if refusal != nil {
		d.refuseRollback(q, exec, refusal)
		return
	}
	f, err := flow.Parse(rec.File, rec.Source)
	if err != nil {
		d.refuseRollback(q, exec, fmt.Errorf("execution %s: its flow no longer decodes: %w", rec.ID, err))
		return
	}
	f.Dir = rec.Dir
	saved, err := savedSettings(rec)
	if err != nil {
		d.refuseRollback(q, exec, err)
		return
	}
	cfg := d.opts.Config
	saved.apply(&cfg)
	s, err := openSession(cfg, d.j, nil, d.rollbackObserver(q), func(s *session) error {
		s.release, s.dispatch = saved.Release, saved.Dispatch
		s.final = d.rollbackFinal(q)
		return nil
	})
	if err != nil {
		log.Error("open a session for a rollback", "error", err)
		return
	}
	defer s.close()
	resuming := rec.Undo != nil && !rec.Status.Done()
	if !resuming {
		if err := s.eng.CheckUndo(f, rec); err != nil {
			d.refuseRollback(q, exec, err)
			return
		}
	}
	d.mu.Lock()
	q.Execution, q.Flow = rec.ID, rec.Flow
	d.mu.Unlock()
	d.setRunning(q, s.eng)
	var res *engine.Result
	if resuming {
		log.Info("resuming rollback", "execution", rec.ID)
		res, err = s.eng.Resume(ctx, f, rec)
	} else {
		log.Info("rolling back", "execution", rec.ID)
		res, err = s.eng.Undo(ctx, f, rec, q.Rollback.By, q.Rollback.Note)
	}
	switch {
	case ctx.Err() != nil:
		return // shutting down: the undo resumes on the next start
	case errors.Is(err, engine.ErrNotUndoable):
		d.refuseRollback(q, exec, err)
		return
	case err != nil:
		log.Error("rollback stopped without an end", "error", err)
		return
	}
	s.done(nil)
	log.Info("rollback finished", "execution", res.Execution, "status", res.Status)
	wake(d.sendWake)
}

// rollbackTarget finds the execution a rollback of deployment undoes: the
// device's last execution, which must be the deployment's. refusal says
// why there is none (exec names the deployment's execution when the
// device has one).
func (d *Daemon) rollbackTarget(deployment string) (rec *engine.Record, exec string, refusal, err error) {
	ids, err := d.j.Executions()
	if err != nil {
		return nil, "", nil, err
	}
	for i := len(ids) - 1; i >= 0; i-- {
		r, err := readExecution(d.j, ids[i])
		if err != nil {
			return nil, "", nil, err
		}
		saved, err := savedSettings(r)
		if err != nil || saved.Dispatch == nil || saved.Dispatch.Deployment != deployment {
			continue
		}
		if i != len(ids)-1 {
			return nil, r.ID, fmt.Errorf("execution %s of deployment %s is not the device's last execution (%s ran since)", r.ID, deployment, ids[len(ids)-1]), nil
		}
		return r, r.ID, nil, nil
	}
	return nil, "", fmt.Errorf("the device has no execution of deployment %s", deployment), nil
}

// refuseRollback answers a rollback with rolled-back Failed and takes it
// off the queue, in one transaction; nothing ran.
func (d *Daemon) refuseRollback(q *queued, exec string, cause error) {
	ei := &transport.ErrorInfo{Type: onfailure.KindOf(cause), Message: clip(cause.Error())}
	err := d.j.Update(func(tx *journal.Tx) error {
		return d.endRollbackTx(tx, q, exec, transport.StatusFailed, ei)
	})
	if err != nil {
		d.log.Error("journal a refused rollback", "deployment", q.Deployment, "error", err)
		return
	}
	d.log.Warn("rollback refused", "deployment", q.Deployment, "error", cause)
	wake(d.sendWake)
}

// endRollbackTx takes the rollback q off the queue, records its end and
// puts its rolled-back event in the outbox, inside tx.
func (d *Daemon) endRollbackTx(tx *journal.Tx, q *queued, exec string, status transport.Status, ei *transport.ErrorInfo) error {
	if err := tx.Dequeue(q.pos); err != nil {
		return err
	}
	if err := putCommand(tx, q.Dispatch, &command{Type: transport.TypeRollback, Deployment: q.Deployment, State: stateFinished,
		Execution: exec, Status: status, Error: ei}); err != nil {
		return err
	}
	return d.appendTx(tx, &transport.RolledBack{Deployment: q.Deployment, Execution: exec, Status: status, Error: ei})
}

// rollbackFinal is the session's final hook for the rollback q: the
// rolled-back event commits with the undone execution's final record.
func (d *Daemon) rollbackFinal(q *queued) func(tx *journal.Tx, data []byte) error {
	return func(tx *journal.Tx, data []byte) error {
		var rec engine.Record
		if err := json.Unmarshal(data, &rec); err != nil {
			return err
		}
		var ei *transport.ErrorInfo
		if rec.Undo != nil {
			for _, a := range rec.Actions[min(rec.Undo.FirstAction, len(rec.Actions)):] {
				if a.Status == engine.Failed && a.Error != nil && ei == nil {
					ei = &transport.ErrorInfo{Type: a.Error.Type, Message: clip(fmt.Sprintf("step %s: %s: %s", a.Step, a.Action, a.Error.Message))}
				}
			}
		}
		return d.endRollbackTx(tx, q, rec.ID, transport.Status(rec.Status), ei)
	}
}

// rollbackObserver reports an undo's rollback actions and rollback steps
// as the dispatch's observer does; its start and end are the rollback's
// (rolled-back, written with the final record).
func (d *Daemon) rollbackObserver(q *queued) func(engine.Event) {
	report := d.observer(q)
	return func(ev engine.Event) {
		switch ev.Type {
		case engine.EventStart, engine.EventFlow:
			return
		}
		report(ev)
	}
}
