package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
)

// commandMessage builds the wire message of a stored command: always the
// same id and time, so that agents recognize a command sent again.
func (c *Controller) commandMessage(ctx context.Context, cmd store.Command) (*transport.Message, error) {
	var body transport.Body
	switch cmd.Type {
	case transport.TypeDispatch:
		d, err := c.st.Deployment(ctx, cmd.Deployment)
		if err != nil {
			return nil, err
		}
		b, err := c.st.Bundle(ctx, d.Bundle)
		if err != nil {
			return nil, err
		}
		r, err := c.st.Run(ctx, cmd.Deployment, cmd.Device)
		if err != nil {
			return nil, err
		}
		body = c.dispatchBody(d, b, r.GuidedFailure)
	case transport.TypeCancel:
		body = &transport.Cancel{Deployment: cmd.Deployment, By: cmd.By, Note: cmd.Note}
	case transport.TypeGuide:
		body = &transport.Guide{Deployment: cmd.Deployment, Step: cmd.Step, Action: cmd.Action, By: cmd.By, Note: cmd.Note}
	case transport.TypeMarkFailed:
		body = &transport.MarkFailed{Deployment: cmd.Deployment, Step: cmd.Step, By: cmd.By, Note: cmd.Note}
	case transport.TypeRollback:
		body = &transport.Rollback{Deployment: cmd.Deployment, By: cmd.By, Note: cmd.Note}
	default:
		return nil, fmt.Errorf("command %s: unknown type %q", cmd.ID, cmd.Type)
	}
	return &transport.Message{V: transport.Version, ID: cmd.ID, Type: cmd.Type, Device: cmd.Device, Time: cmd.Time, Body: body}, nil
}

// dispatchBody is the dispatch of deployment d's bundle b, with d's
// failure strategies, asking for guided failure with gf (nil: none).
func (c *Controller) dispatchBody(d store.Deployment, b store.Bundle, gf *api.GuidedFailure) *transport.Dispatch {
	body := &transport.Dispatch{Deployment: d.ID, URL: c.BundleURL(b.SHA256), SHA256: b.SHA256, Size: b.Size, Vars: d.Vars,
		FailureStrategies: d.FailureStrategies}
	if gf != nil {
		// Checked when the deployment (or the setting) was made.
		t, _ := time.ParseDuration(gf.Timeout)
		body.GuidedFailure = &transport.GuidedFailure{TimeoutSeconds: timeoutSeconds(t), OnTimeout: gf.OnTimeout}
	}
	return body
}

// timeoutSeconds is d in whole seconds, rounded up.
func timeoutSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// sendCommands publishes cmds, a device's commands in the order given and
// up to 16 devices at once. A command that fails stays pending (if it was
// stored as such) and goes out again on the next connect or presence. It
// returns how many failed and the first error.
func (c *Controller) sendCommands(ctx context.Context, cmds []store.Command) (int, error) {
	if len(cmds) == 0 {
		return 0, nil
	}
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	return c.sendCommandsLocked(ctx, cmds)
}

// sendCommandsLocked is sendCommands for a caller holding pubMu.
func (c *Controller) sendCommandsLocked(ctx context.Context, cmds []store.Command) (int, error) {
	var (
		byDevice = map[string][]store.Command{}
		devices  []string
	)
	for _, cmd := range cmds {
		if byDevice[cmd.Device] == nil {
			devices = append(devices, cmd.Device)
		}
		byDevice[cmd.Device] = append(byDevice[cmd.Device], cmd)
	}
	var (
		mu     sync.Mutex
		failed int
		first  error
		wg     sync.WaitGroup
		sem    = make(chan struct{}, 16)
	)
	for _, dev := range devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, cmd := range byDevice[dev] {
				m, err := c.commandMessage(ctx, cmd)
				if err == nil {
					err = c.send(ctx, m)
				}
				if err != nil {
					mu.Lock()
					failed++
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				c.log.Debug("command sent", "type", cmd.Type, "deployment", cmd.Deployment, "device", cmd.Device, "id", cmd.ID)
			}
		}()
	}
	wg.Wait()
	return failed, first
}

// resendQueue collects requests to send pending commands again: for every
// device (after a connect) or for some (that came online).
type resendQueue struct {
	mu      sync.Mutex
	all     bool
	devices map[string]bool
	wake    chan struct{}
}

func newResendQueue() *resendQueue {
	return &resendQueue{devices: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (q *resendQueue) requestAll() {
	q.mu.Lock()
	q.all = true
	q.mu.Unlock()
	q.signal()
}

func (q *resendQueue) requestDevice(device string) {
	q.mu.Lock()
	q.devices[device] = true
	q.mu.Unlock()
	q.signal()
}

func (q *resendQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *resendQueue) take() (all bool, devices []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	all, q.all = q.all, false
	for d := range q.devices {
		devices = append(devices, d)
	}
	clear(q.devices)
	slices.Sort(devices)
	return all, devices
}

// resendLoop sends pending commands again when asked, until ctx ends.
func (c *Controller) resendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.resends.wake:
		}
		c.resend(ctx)
	}
}

// resend sends the pending commands the queue asks for. It reads them
// while holding pubMu, so that a dispatch read here can never go out
// after a cancel committed later.
func (c *Controller) resend(ctx context.Context) {
	all, devices := c.resends.take()
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	var cmds []store.Command
	if all {
		list, err := c.st.Commands(ctx, "")
		if err != nil {
			c.log.Error("read pending commands", "error", err)
			return
		}
		cmds = list
	} else {
		for _, d := range devices {
			list, err := c.st.Commands(ctx, d)
			if err != nil {
				c.log.Error("read pending commands", "device", d, "error", err)
				continue
			}
			cmds = append(cmds, list...)
		}
	}
	if len(cmds) == 0 {
		return
	}
	// Oldest first, so that a device's dispatches keep their order.
	slices.SortStableFunc(cmds, func(a, b store.Command) int { return a.Time.Compare(b.Time) })
	failed, err := c.sendCommandsLocked(ctx, cmds)
	if err != nil {
		c.log.Warn("resend pending commands; they go out again on the next connect or presence", "commands", len(cmds), "failed", failed, "error", err)
		return
	}
	c.log.Info("pending commands sent again", "commands", len(cmds))
}
