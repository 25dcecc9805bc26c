// Package client is the Go client of the controller's REST API
// (controller/api): devices, bundles, deployments, logs, cancel, promote,
// retry, mark-failed, guidance, interventions and strategy sets, and the server-sent
// event stream of a deployment, with reconnection.
//
// Errors are typed at this boundary, the one that understands HTTP:
//
//   - an error answer is a *APIError (Status, Code, Message), found with
//     errors.As; a 401 is also an onfailure.Authentication error and a 403
//     an onfailure.Authorization one;
//   - a controller that cannot be reached (refused, reset, DNS, TLS
//     handshake) is an onfailure.Connectivity error naming the controller's
//     URL (a certificate that does not verify: onfailure.Authentication);
//   - the caller's context ending returns its error (context.Canceled or
//     context.DeadlineExceeded) in the chain, never Connectivity.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
)

// Client talks to one controller. It is safe for concurrent use.
type Client struct {
	base  string // scheme://host[/prefix], without a trailing slash
	token string
	hc    *http.Client

	// Watch's reconnection: the first delay (the stream's "retry:" field
	// replaces it), the cap, and how long a stream may stay silent (not
	// even a comment) before it is taken as dropped.
	retryMin, retryMax time.Duration
	idle               time.Duration
}

// Defaults of Watch's reconnection.
const (
	DefaultRetry     = 500 * time.Millisecond
	DefaultRetryMax  = 15 * time.Second
	DefaultIdleLimit = 2 * time.Minute
)

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// New returns a client of the controller at baseURL (http or https, with
// an optional path prefix), sending token as a bearer token when it is not
// empty. httpClient nil means a new http.Client; a given one must have no
// Timeout, since Watch holds its stream open (bound calls with their
// context instead).
func New(baseURL, token string, httpClient *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("controller URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("controller URL %q: want http:// or https://", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("controller URL %q: no host", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("controller URL %q: want no query, fragment or user info", baseURL)
	}
	if strings.ContainsAny(token, "\r\n") {
		return nil, errors.New("token: contains a line break")
	}
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	return &Client{
		base:     strings.TrimRight(u.String(), "/"),
		token:    token,
		hc:       httpClient,
		retryMin: DefaultRetry,
		retryMax: DefaultRetryMax,
		idle:     DefaultIdleLimit,
	}, nil
}

// BaseURL returns the controller's URL, as errors name it.
func (c *Client) BaseURL() string { return c.base }

// APIError is an error answer of the controller: its HTTP status and the
// api.Error body's code and message. Code is empty when the body was not
// an api.Error (a proxy's page, say); Message then holds its start.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("controller answered %d", e.Status)
	if t := http.StatusText(e.Status); t != "" {
		s += " " + t
	}
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// path fills in a PathX constant's {name} values, path-escaped, in order.
func path(p string, kv ...string) string {
	for i := 0; i+1 < len(kv); i += 2 {
		p = strings.Replace(p, "{"+kv[i]+"}", url.PathEscape(kv[i+1]), 1)
	}
	return p
}

// request is one call of the API.
type request struct {
	op          string // what is being done, for errors: "list devices"
	method      string
	path        string
	query       url.Values
	body        io.Reader
	size        int64 // of body, -1 when unknown
	contentType string
	accept      string
	header      http.Header
}

// send makes the request and returns the answer when its status is 2xx.
// Every other outcome is an error typed as the package comment says; the
// caller closes the body.
func (c *Client) send(ctx context.Context, r request) (*http.Response, error) {
	u := c.base + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, r.body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.op, err)
	}
	if r.body != nil {
		req.ContentLength = r.size
		if r.size == 0 {
			req.Body = http.NoBody
		}
		req.Header.Set("Content-Type", r.contentType)
	}
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	if r.accept == "" {
		r.accept = "application/json"
	}
	req.Header.Set("Accept", r.accept)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportErr(ctx, r.op, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, statusErr(r.op, resp)
}

// transportErr types a failure of the HTTP exchange itself.
func (c *Client) transportErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		// The caller's deadline or cancel, not the network.
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return onfailure.E(onfailure.Authentication, op, fmt.Errorf("controller %s: %w", c.base, err))
	}
	return onfailure.E(onfailure.Connectivity, op, fmt.Errorf("cannot reach the controller at %s: %w", c.base, err))
}

// statusErr reads an error answer into an *APIError, typed by status.
func statusErr(op string, resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	ae := &APIError{Status: resp.StatusCode}
	var body api.Error
	if json.Unmarshal(data, &body) == nil && body.Error.Code != "" {
		ae.Code, ae.Message = body.Error.Code, body.Error.Message
	} else {
		ae.Message = firstLine(strings.TrimSpace(string(data)), 200)
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return onfailure.E(onfailure.Authentication, op, ae)
	case http.StatusForbidden:
		return onfailure.E(onfailure.Authorization, op, ae)
	}
	return fmt.Errorf("%s: %w", op, ae)
}

func firstLine(s string, max int) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// call makes the request and decodes a JSON answer into out (when out is
// not nil and the answer has a body).
func (c *Client) call(ctx context.Context, r request, out any) error {
	resp, err := c.send(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", r.op, context.Cause(ctx))
		}
		return fmt.Errorf("%s: read the controller's answer: %w", r.op, err)
	}
	return nil
}

func get(op, p string) request { return request{op: op, method: http.MethodGet, path: p} }

func postJSON(op, p string, v any) (request, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return request{}, fmt.Errorf("%s: %w", op, err)
	}
	return request{op: op, method: http.MethodPost, path: p, body: bytes.NewReader(data),
		size: int64(len(data)), contentType: "application/json"}, nil
}

// Health asks the controller whether it is up (GET /v1/health).
func (c *Client) Health(ctx context.Context) (*api.Health, error) {
	var h api.Health
	if err := c.call(ctx, get("health", api.PathHealth), &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Devices lists the devices the controller knows.
func (c *Client) Devices(ctx context.Context) ([]api.Device, error) {
	var l api.DeviceList
	if err := c.call(ctx, get("list devices", api.PathDevices), &l); err != nil {
		return nil, err
	}
	return l.Devices, nil
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (*api.Device, error) {
	var d api.Device
	if err := c.call(ctx, get("get device "+id, path(api.PathDevice, "id", id)), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// BundleContentType is the Content-Type of an upload.
const BundleContentType = "application/octet-stream"

// UploadBundle sends a bundle's bytes (POST /v1/bundles) and returns what
// the controller made of it. The controller checks the bundle; a bundle
// it refuses is an *APIError with status 400 (413 when too large). When r
// is an *os.File or has a Len, its size is sent as Content-Length.
func (c *Client) UploadBundle(ctx context.Context, r io.Reader) (*api.Bundle, error) {
	size := int64(-1)
	switch v := r.(type) {
	case interface{ Len() int }:
		size = int64(v.Len())
	case *os.File:
		if st, err := v.Stat(); err == nil && st.Mode().IsRegular() {
			if off, err := v.Seek(0, io.SeekCurrent); err == nil {
				size = st.Size() - off
			}
		}
	}
	var b api.Bundle
	req := request{op: "upload bundle", method: http.MethodPost, path: api.PathBundles,
		body: r, size: size, contentType: BundleContentType}
	if err := c.call(ctx, req, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// UploadBundleFile uploads the bundle file at path.
func (c *Client) UploadBundleFile(ctx context.Context, path string) (*api.Bundle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("upload bundle: %w", err)
	}
	defer f.Close()
	return c.UploadBundle(ctx, f)
}

// Bundles lists the uploaded bundles.
func (c *Client) Bundles(ctx context.Context) ([]api.Bundle, error) {
	var l api.BundleList
	if err := c.call(ctx, get("list bundles", api.PathBundles), &l); err != nil {
		return nil, err
	}
	return l.Bundles, nil
}

// CreateDeployment starts a deployment and returns it.
func (c *Client) CreateDeployment(ctx context.Context, d api.CreateDeployment) (*api.Deployment, error) {
	req, err := postJSON("create deployment", api.PathDeployments, d)
	if err != nil {
		return nil, err
	}
	var out api.Deployment
	if err := c.call(ctx, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Deployments lists the deployments, newest first, without their devices.
func (c *Client) Deployments(ctx context.Context) ([]api.Deployment, error) {
	var l api.DeploymentList
	if err := c.call(ctx, get("list deployments", api.PathDeployments), &l); err != nil {
		return nil, err
	}
	return l.Deployments, nil
}

// Deployment returns one deployment with its devices.
func (c *Client) Deployment(ctx context.Context, id string) (*api.Deployment, error) {
	var d api.Deployment
	if err := c.call(ctx, get("get deployment "+id, path(api.PathDeployment, "id", id)), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Logs returns the log tails of a deployment's steps on one device; step,
// when not empty, keeps that step's only.
func (c *Client) Logs(ctx context.Context, id, device, step string) ([]api.Log, error) {
	r := get(fmt.Sprintf("get logs of deployment %s on %s", id, device),
		path(api.PathDeviceLogs, "id", id, "device", device))
	if step != "" {
		r.query = url.Values{"step": {step}}
	}
	var l api.LogList
	if err := c.call(ctx, r, &l); err != nil {
		return nil, err
	}
	return l.Logs, nil
}

// Cancel cancels a deployment. It returns the deployment as the
// controller answers it, or nil when the answer has no body. Cancelling a
// finished deployment is an *APIError with status 409.
func (c *Client) Cancel(ctx context.Context, id string, body api.Cancel) (*api.Deployment, error) {
	req, err := postJSON("cancel deployment "+id, path(api.PathCancel, "id", id), body)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(ctx, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: read the controller's answer: %w", req.op, err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var d api.Deployment
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: read the controller's answer: %w", req.op, err)
	}
	return &d, nil
}

// FinalStatus reports whether a deployment status is final: Succeeded,
// Failed, Cancelled, Aborted or RolledBack (RollingBack is not).
func FinalStatus(status string) bool {
	switch status {
	case api.DeploymentSucceeded, api.DeploymentFailed, api.DeploymentCancelled, api.DeploymentAborted, api.DeploymentRolledBack:
		return true
	}
	return false
}

// post sends body as JSON to path and decodes the answer into out.
func (c *Client) post(ctx context.Context, op, p string, body, out any) error {
	req, err := postJSON(op, p, body)
	if err != nil {
		return err
	}
	return c.call(ctx, req, out)
}

// Promote starts the next wave of a deployment that waits between waves
// (POST .../promote). A deployment whose wave still runs, or that has no
// next wave, is an *APIError with status 409.
func (c *Client) Promote(ctx context.Context, id string, body api.Promote) (*api.Deployment, error) {
	var d api.Deployment
	if err := c.post(ctx, "promote deployment "+id, path(api.PathPromote, "id", id), body, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Retry makes a new deployment of a finished deployment's failed (with
// FailedOnly) or unsuccessful devices and returns it.
func (c *Client) Retry(ctx context.Context, id string, body api.Retry) (*api.Deployment, error) {
	var d api.Deployment
	if err := c.post(ctx, "retry deployment "+id, path(api.PathRetry, "id", id), body, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// MarkFailed stops the running step of devices of a deployment as failed.
// A controller that does not allow it answers 403: an *APIError that is
// also an onfailure.Authorization error.
func (c *Client) MarkFailed(ctx context.Context, id string, body api.MarkFailed) (*api.Deployment, error) {
	var d api.Deployment
	if err := c.post(ctx, "mark-failed in deployment "+id, path(api.PathMarkFailed, "id", id), body, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Guide answers a device of a deployment that is paused for guidance.
func (c *Client) Guide(ctx context.Context, id, device string, body api.Guide) (*api.Deployment, error) {
	var d api.Deployment
	op := fmt.Sprintf("guide device %s of deployment %s", device, id)
	if err := c.post(ctx, op, path(api.PathGuide, "id", id, "device", device), body, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// GuideGroup answers every device of an intervention group.
func (c *Client) GuideGroup(ctx context.Context, group string, body api.Guide) (*api.GuideResult, error) {
	var r api.GuideResult
	if err := c.post(ctx, "guide intervention group "+group, path(api.PathGuideGroup, "group", group), body, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Interventions lists the devices paused for guidance, grouped.
func (c *Client) Interventions(ctx context.Context) ([]api.Intervention, error) {
	var l api.InterventionList
	if err := c.call(ctx, get("list interventions", api.PathInterventions), &l); err != nil {
		return nil, err
	}
	return l.Interventions, nil
}

// StrategySets lists the stored strategy sets, by name.
func (c *Client) StrategySets(ctx context.Context) ([]api.StrategySet, error) {
	var l api.StrategySetList
	if err := c.call(ctx, get("list strategy sets", api.PathStrategySets), &l); err != nil {
		return nil, err
	}
	return l.StrategySets, nil
}

// StrategySet returns one strategy set; one that does not exist is an
// *APIError with status 404.
func (c *Client) StrategySet(ctx context.Context, name string) (*api.StrategySet, error) {
	var s api.StrategySet
	if err := c.call(ctx, get("get strategy set "+name, path(api.PathStrategySet, "name", name)), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// PutStrategySet stores data, a YAML or JSON list of failure strategies,
// as the strategy set name, replacing one of that name, and returns it
// and whether it is new. A list the controller refuses is an *APIError
// with status 400 whose message gives each problem's line and column in
// data.
func (c *Client) PutStrategySet(ctx context.Context, name string, data []byte) (*api.StrategySet, bool, error) {
	req := request{op: "put strategy set " + name, method: http.MethodPut, path: path(api.PathStrategySet, "name", name),
		body: bytes.NewReader(data), size: int64(len(data)), contentType: "application/yaml"}
	resp, err := c.send(ctx, req)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	var s api.StrategySet
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, false, fmt.Errorf("%s: read the controller's answer: %w", req.op, err)
	}
	return &s, resp.StatusCode == http.StatusCreated, nil
}

// DeleteStrategySet deletes a strategy set; the deployments made with it
// keep their copy. One that does not exist is an *APIError with status
// 404.
func (c *Client) DeleteStrategySet(ctx context.Context, name string) error {
	return c.call(ctx, request{op: "delete strategy set " + name, method: http.MethodDelete, path: path(api.PathStrategySet, "name", name)}, nil)
}
