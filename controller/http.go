package controller

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/edgeflow/edgeflow/controller/api"
)

// maxJSONBody caps a JSON request body.
const maxJSONBody = 1 << 20

// Handler returns the REST API of controller/api (docs/api.md): JSON
// everywhere, errors as api.Error. With Options.Token set, every /v1 path
// but the bundle download (agents fetch it; the sha256 in its path is
// unguessable) and /v1/health requires "Authorization: Bearer TOKEN".
func (c *Controller) Handler() http.Handler {
	mux := http.NewServeMux()
	handle := func(method, path string, public bool, h http.HandlerFunc) {
		if !public {
			h = c.authorize(h)
		}
		mux.HandleFunc(method+" "+path, h)
	}
	handle("GET", api.PathHealth, true, c.health)
	handle("GET", api.PathDevices, false, c.listDevices)
	handle("GET", api.PathDevice, false, c.getDevice)
	handle("GET", api.PathBundles, false, c.listBundles)
	handle("POST", api.PathBundles, false, c.uploadBundle)
	handle("GET", api.PathBundle, true, c.downloadBundle)
	handle("GET", api.PathDeployments, false, c.listDeployments)
	handle("POST", api.PathDeployments, false, c.createDeployment)
	handle("GET", api.PathDeployment, false, c.getDeployment)
	handle("GET", api.PathDeploymentWatch, false, c.watch)
	handle("GET", api.PathDeviceLogs, false, c.logs)
	handle("POST", api.PathCancel, false, c.cancelDeployment)
	handle("POST", api.PathPromote, false, c.promote)
	handle("POST", api.PathRetry, false, c.retry)
	handle("POST", api.PathMarkFailed, false, c.markFailed)
	handle("POST", api.PathGuide, false, c.guideDevice)
	handle("GET", api.PathInterventions, false, c.interventions)
	handle("POST", api.PathGuideGroup, false, c.guideGroup)
	handle("GET", api.PathStrategySets, false, c.listStrategySets)
	handle("GET", api.PathStrategySet, false, c.getStrategySet)
	handle("PUT", api.PathStrategySet, false, c.putStrategySet)
	handle("DELETE", api.PathStrategySet, false, c.deleteStrategySet)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no such resource: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (c *Controller) authorize(h http.HandlerFunc) http.HandlerFunc {
	if c.opts.Token == "" {
		return h
	}
	want := []byte("Bearer " + c.opts.Token)
	return func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="edgeflow"`)
			writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "missing or wrong API token: send Authorization: Bearer TOKEN")
			return
		}
		h(w, r)
	}
}

var statusOf = map[string]int{
	api.CodeInvalid:      http.StatusBadRequest,
	api.CodeUnauthorized: http.StatusUnauthorized,
	api.CodeForbidden:    http.StatusForbidden,
	api.CodeNotFound:     http.StatusNotFound,
	api.CodeConflict:     http.StatusConflict,
	api.CodeTooLarge:     http.StatusRequestEntityTooLarge,
	api.CodeInternal:     http.StatusInternalServerError,
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.Error{Error: api.ErrorBody{Code: code, Message: msg}})
}

// fail answers err: an *Error with its code, anything else as internal
// (logged; the answer does not carry the details).
func (c *Controller) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if errors.As(err, &e) {
		writeError(w, statusOf[e.Code], e.Code, e.Message)
		return
	}
	c.log.Error("api request", "method", r.Method, "path", r.URL.Path, "error", err)
	writeError(w, http.StatusInternalServerError, api.CodeInternal, "internal error; the controller's log has the details")
}

// decode reads a JSON request body into v, refusing unknown fields.
// An empty body is allowed when optional.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, io.EOF) && optional:
			return nil
		case errors.Is(err, io.EOF):
			return invalid("empty body: want a JSON object")
		case errors.As(err, &mbe):
			return &Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("body over the %d-byte limit", maxJSONBody)}
		}
		return invalid("body: %v", err)
	}
	if dec.More() {
		return invalid("body: more than one JSON value")
	}
	return nil
}

func (c *Controller) health(w http.ResponseWriter, _ *http.Request) {
	h := api.Health{Status: "ok"}
	if cr, ok := c.client.(connectedReporter); ok {
		h.MQTT = "disconnected"
		if cr.Connected() {
			h.MQTT = "connected"
		}
	}
	writeJSON(w, http.StatusOK, h)
}

func (c *Controller) listDevices(w http.ResponseWriter, r *http.Request) {
	ds, err := c.Devices(r.Context())
	c.reply(w, r, http.StatusOK, api.DeviceList{Devices: ds}, err)
}

func (c *Controller) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := c.Device(r.Context(), r.PathValue("id"))
	c.reply(w, r, http.StatusOK, d, err)
}

func (c *Controller) listBundles(w http.ResponseWriter, r *http.Request) {
	bs, err := c.Bundles(r.Context())
	c.reply(w, r, http.StatusOK, api.BundleList{Bundles: bs}, err)
}

func (c *Controller) uploadBundle(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > c.opts.MaxBundleSize {
		writeError(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, fmt.Sprintf("bundle of %d bytes, over the %d-byte upload limit", r.ContentLength, c.opts.MaxBundleSize))
		return
	}
	b, created, err := c.AddBundle(r.Context(), http.MaxBytesReader(w, r.Body, c.opts.MaxBundleSize))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	w.Header().Set("Location", "/v1/bundles/"+b.SHA256)
	writeJSON(w, status, b)
}

func (c *Controller) downloadBundle(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha256")
	if !validSHA256(sha) {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("bundle %q: want a sha256 (64 lowercase hex digits)", sha))
		return
	}
	f, b, err := c.openBundle(r.Context(), sha)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	defer f.Close()
	h := w.Header()
	// Content-addressed: the sha256 is a strong ETag and the bytes never
	// change, so agents resume with Range and If-Range.
	h.Set("ETag", `"`+sha+`"`)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	http.ServeContent(w, r, sha+".bundle", b.Created, f)
}

func (c *Controller) listDeployments(w http.ResponseWriter, r *http.Request) {
	ds, err := c.Deployments(r.Context())
	c.reply(w, r, http.StatusOK, api.DeploymentList{Deployments: ds}, err)
}

func (c *Controller) createDeployment(w http.ResponseWriter, r *http.Request) {
	answer(c, w, r, false, http.StatusCreated, func(req api.CreateDeployment) (api.Deployment, error) {
		d, err := c.Create(r.Context(), req)
		if err == nil {
			w.Header().Set("Location", "/v1/deployments/"+d.ID)
		}
		return d, err
	})
}

func (c *Controller) getDeployment(w http.ResponseWriter, r *http.Request) {
	d, err := c.Deployment(r.Context(), r.PathValue("id"))
	c.reply(w, r, http.StatusOK, d, err)
}

func (c *Controller) cancelDeployment(w http.ResponseWriter, r *http.Request) {
	answer(c, w, r, true, http.StatusOK, func(req api.Cancel) (api.Deployment, error) {
		return c.Cancel(r.Context(), r.PathValue("id"), req)
	})
}

func (c *Controller) logs(w http.ResponseWriter, r *http.Request) {
	logs, err := c.Logs(r.Context(), r.PathValue("id"), r.PathValue("device"), strings.TrimSpace(r.URL.Query().Get("step")))
	c.reply(w, r, http.StatusOK, api.LogList{Logs: logs}, err)
}

// answer decodes the request's JSON body into a new T (optional: an empty
// body is the zero T), calls fn with it and answers what fn returns with
// status.
func answer[T, R any](c *Controller, w http.ResponseWriter, r *http.Request, optional bool, status int, fn func(T) (R, error)) {
	var req T
	if err := decode(w, r, &req, optional); err != nil {
		c.fail(w, r, err)
		return
	}
	out, err := fn(req)
	c.reply(w, r, status, out, err)
}

// reply answers out with status, or err when it is not nil.
func (c *Controller) reply(w http.ResponseWriter, r *http.Request, status int, out any, err error) {
	if err != nil {
		c.fail(w, r, err)
		return
	}
	writeJSON(w, status, out)
}

func (c *Controller) promote(w http.ResponseWriter, r *http.Request) {
	answer(c, w, r, true, http.StatusOK, func(req api.Promote) (api.Deployment, error) {
		return c.Promote(r.Context(), r.PathValue("id"), req)
	})
}

func (c *Controller) retry(w http.ResponseWriter, r *http.Request) {
	answer(c, w, r, true, http.StatusCreated, func(req api.Retry) (api.Deployment, error) {
		d, err := c.Retry(r.Context(), r.PathValue("id"), req)
		if err == nil {
			w.Header().Set("Location", "/v1/deployments/"+d.ID)
		}
		return d, err
	})
}

func (c *Controller) markFailed(w http.ResponseWriter, r *http.Request) {
	if !c.opts.AllowMarkFailed {
		// Refused whatever the body says.
		c.fail(w, r, errMarkFailedOff)
		return
	}
	answer(c, w, r, false, http.StatusOK, func(req api.MarkFailed) (api.Deployment, error) {
		return c.MarkFailed(r.Context(), r.PathValue("id"), req)
	})
}

func (c *Controller) guideDevice(w http.ResponseWriter, r *http.Request) {
	answer(c, w, r, false, http.StatusOK, func(req api.Guide) (api.Deployment, error) {
		return c.Guide(r.Context(), r.PathValue("id"), r.PathValue("device"), req)
	})
}

func (c *Controller) guideGroup(w http.ResponseWriter, r *http.Request) {
	answer(c, w, r, false, http.StatusOK, func(req api.Guide) (api.GuideResult, error) {
		return c.GuideGroup(r.Context(), r.PathValue("group"), req)
	})
}

func (c *Controller) interventions(w http.ResponseWriter, r *http.Request) {
	l, err := c.Interventions(r.Context())
	c.reply(w, r, http.StatusOK, api.InterventionList{Interventions: l}, err)
}

func (c *Controller) listStrategySets(w http.ResponseWriter, r *http.Request) {
	sets, err := c.StrategySets(r.Context())
	c.reply(w, r, http.StatusOK, api.StrategySetList{StrategySets: sets}, err)
}

func (c *Controller) getStrategySet(w http.ResponseWriter, r *http.Request) {
	set, err := c.StrategySet(r.Context(), r.PathValue("name"))
	c.reply(w, r, http.StatusOK, set, err)
}

// putStrategySet reads the body, a YAML or JSON list of failure
// strategies (whatever its Content-Type), as the set: 201 when new, 200
// when it replaced one.
func (c *Controller) putStrategySet(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			c.fail(w, r, &Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("body over the %d-byte limit", maxJSONBody)})
			return
		}
		c.fail(w, r, invalid("body: %v", err))
		return
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		c.fail(w, r, invalid("empty body: want a YAML or JSON list of failure strategies"))
		return
	}
	set, created, err := c.PutStrategySet(r.Context(), r.PathValue("name"), data)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	w.Header().Set("Location", "/v1/strategy-sets/"+set.Name)
	writeJSON(w, status, set)
}

func (c *Controller) deleteStrategySet(w http.ResponseWriter, r *http.Request) {
	if err := c.DeleteStrategySet(r.Context(), r.PathValue("name")); err != nil {
		c.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
