package controller

import (
	"sync"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
)

// subscriberBuffer is how many feed events a watcher may lag behind
// before it is dropped (and catches up from the store).
const subscriberBuffer = 256

// hub hands each deployment's new feed events to its watchers. It never
// blocks: a watcher whose buffer is full is dropped, its channel closed,
// and it reads what it missed from the store.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[*subscription]bool
}

// subscription is one watcher of a deployment's feed.
type subscription struct {
	deployment string
	// C receives the deployment's feed events, in Seq order; it is closed
	// when the watcher lagged and was dropped.
	C chan api.Event
}

func newHub() *hub { return &hub{subs: map[string]map[*subscription]bool{}} }

func (h *hub) subscribe(deployment string) *subscription {
	s := &subscription{deployment: deployment, C: make(chan api.Event, subscriberBuffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[deployment] == nil {
		h.subs[deployment] = map[*subscription]bool{}
	}
	h.subs[deployment][s] = true
	return s
}

func (h *hub) unsubscribe(s *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.drop(s)
}

// drop removes s and closes its channel; h.mu is held.
func (h *hub) drop(s *subscription) {
	set := h.subs[s.deployment]
	if !set[s] {
		return
	}
	delete(set, s)
	if len(set) == 0 {
		delete(h.subs, s.deployment)
	}
	close(s.C)
}

// publish hands committed feed events to the watchers of their
// deployments. The caller publishes in commit order (it holds the
// controller's state lock), so each watcher sees Seq order.
func (h *hub) publish(events []store.FeedEvent) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range events {
		for s := range h.subs[e.Deployment] {
			select {
			case s.C <- e.Event:
			default:
				h.drop(s)
			}
		}
	}
}
