package controller

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
)

// feedPage is how many stored feed events a watcher reads at a time.
const feedPage = 500

// watch serves a deployment's feed as server-sent events: first what the
// store holds after Last-Event-ID (or ?since=N; none: from the start),
// then each new event as it is committed, with a comment every Heartbeat.
// It ends once the deployment is final and the watcher has its every
// event up to the final "deployment" event, or when the client goes away.
func (c *Controller) watch(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	var after uint64
	from, name := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if from == "" {
		from, name = r.URL.Query().Get("since"), "since"
	}
	if from != "" {
		n, err := strconv.ParseUint(from, 10, 64)
		if err != nil {
			c.fail(w, r, invalid("%s %q: want the seq of the last event received (0 or more)", name, from))
			return
		}
		after = n
	}
	if _, err := c.st.Deployment(ctx, id); err != nil {
		c.fail(w, r, lookup(err, "deployment %s not found", id))
		return
	}

	// Subscribe before reading the store: an event committed after the
	// read is in the subscription, one committed before it in the read.
	sub := c.feed.subscribe(id)
	defer func() { c.feed.unsubscribe(sub) }()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	send := func(e api.Event) error {
		data, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Kind, data)
		after = e.Seq
		return err
	}
	// catchUp sends what the store holds after the last event sent; it
	// reports whether the deployment is final and so everything is sent.
	catchUp := func() (bool, error) {
		// The status first: if it is final, the feed read next holds the
		// final event, committed with it.
		d, err := c.st.Deployment(ctx, id)
		if err != nil {
			return false, err
		}
		for {
			events, err := c.st.Feed(ctx, id, after, feedPage)
			if err != nil {
				return false, err
			}
			for _, e := range events {
				if err := send(e); err != nil {
					return false, err
				}
			}
			if len(events) < feedPage {
				break
			}
		}
		return deploymentFinal(d.Status), rc.Flush()
	}

	done, err := catchUp()
	if err != nil || done {
		return
	}
	heartbeat := time.NewTicker(c.opts.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-heartbeat.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case e, ok := <-sub.C:
			if !ok || e.Seq > after+1 {
				// Dropped for lagging (or an event was missed): read the
				// rest from the store.
				if !ok {
					sub = c.feed.subscribe(id)
				}
				if done, err := catchUp(); err != nil || done {
					return
				}
				continue
			}
			if e.Seq <= after {
				continue
			}
			if send(e) != nil || rc.Flush() != nil {
				return
			}
			if e.Kind == api.EventDeployment && e.Deployment != nil && deploymentFinal(e.Deployment.Status) {
				return
			}
		}
	}
}
