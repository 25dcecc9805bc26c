package client_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"sync"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/client"
	"github.com/edgeflow/edgeflow/onfailure"
)

// TestRolloutRequests sends each rollout request to its path with its
// body, and reads the answer; a 403 is an Authorization error.
func TestRolloutRequests(t *testing.T) {
	var (
		mu   sync.Mutex
		got  = map[string]any{}
		body = func(r *http.Request, v any) {
			json.NewDecoder(r.Body).Decode(v)
			mu.Lock()
			got[r.Method+" "+r.URL.Path] = v
			mu.Unlock()
		}
	)
	dep := api.Deployment{ID: "d-1", Status: api.DeploymentRunning, Wave: 2}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathPromote, func(w http.ResponseWriter, r *http.Request) {
		body(r, &api.Promote{})
		writeJSON(w, 200, dep)
	})
	mux.HandleFunc("POST "+api.PathRetry, func(w http.ResponseWriter, r *http.Request) {
		body(r, &api.Retry{})
		writeJSON(w, 201, api.Deployment{ID: "d-2", RetryOf: "d-1"})
	})
	mux.HandleFunc("POST "+api.PathMarkFailed, func(w http.ResponseWriter, r *http.Request) {
		body(r, &api.MarkFailed{})
		apiErr(w, 403, api.CodeForbidden, "mark-failed is turned off on this controller")
	})
	mux.HandleFunc("POST "+api.PathGuide, func(w http.ResponseWriter, r *http.Request) {
		body(r, &api.Guide{})
		writeJSON(w, 200, dep)
	})
	mux.HandleFunc("POST "+api.PathGuideGroup, func(w http.ResponseWriter, r *http.Request) {
		body(r, &api.Guide{})
		writeJSON(w, 200, api.GuideResult{Group: r.PathValue("group"), Action: onfailure.Retry, Guided: []api.PausedRun{{Deployment: "d-1", Device: "e"}}})
	})
	mux.HandleFunc("GET "+api.PathInterventions, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.InterventionList{Interventions: []api.Intervention{{Group: "g-1", Flow: "web"}}})
	})
	c, _ := serve(t, mux)
	ctx := t.Context()

	if d, err := c.Promote(ctx, "d-1", api.Promote{By: "a", Note: "n"}); err != nil || d.Wave != 2 {
		t.Fatalf("promote: %+v %v", d, err)
	}
	if d, err := c.Retry(ctx, "d-1", api.Retry{FailedOnly: true}); err != nil || d.RetryOf != "d-1" {
		t.Fatalf("retry: %+v %v", d, err)
	}
	_, err := c.MarkFailed(ctx, "d-1", api.MarkFailed{All: true})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 403 || ae.Code != api.CodeForbidden || onfailure.KindOf(err) != onfailure.Authorization {
		t.Fatalf("mark-failed: %v", err)
	}
	if _, err := c.Guide(ctx, "d-1", "edge 1", api.Guide{Action: onfailure.Exclude}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.GuideGroup(ctx, "g-1", api.Guide{Action: onfailure.Retry}); err != nil || r.Group != "g-1" || len(r.Guided) != 1 {
		t.Fatalf("group: %+v %v", r, err)
	}
	if l, err := c.Interventions(ctx); err != nil || len(l) != 1 || l[0].Group != "g-1" {
		t.Fatalf("interventions: %+v %v", l, err)
	}
	want := map[string]any{
		"POST /v1/deployments/d-1/promote":              &api.Promote{By: "a", Note: "n"},
		"POST /v1/deployments/d-1/retry":                &api.Retry{FailedOnly: true},
		"POST /v1/deployments/d-1/mark-failed":          &api.MarkFailed{All: true},
		"POST /v1/deployments/d-1/devices/edge 1/guide": &api.Guide{Action: onfailure.Exclude},
		"POST /v1/interventions/g-1/guide":              &api.Guide{Action: onfailure.Retry},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n%+v\nwant\n%+v", got, want)
	}
	for _, s := range []string{api.DeploymentAborted, api.DeploymentRolledBack, api.DeploymentCancelled} {
		if !client.FinalStatus(s) {
			t.Errorf("%s is not final", s)
		}
	}
	if client.FinalStatus(api.DeploymentPaused) {
		t.Error("Paused is final: watch would stop at a pause")
	}
}
