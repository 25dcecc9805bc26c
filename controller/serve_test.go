package controller_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller"
	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/internal/schematest"
	"github.com/edgeflow/edgeflow/transport"
)

// serve runs controller.Serve in the background and returns where it
// listens; the returned function stops it and returns Serve's error.
func serve(t *testing.T, cfg controller.ServeConfig) (controller.ServeInfo, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	ready := make(chan controller.ServeInfo, 1)
	cfg.Ready = func(i controller.ServeInfo) { ready <- i }
	if cfg.Logger == nil {
		cfg.Logger = brokertest.TestLogger(t)
	}
	done := make(chan error, 1)
	go func() { done <- controller.Serve(ctx, cfg) }()
	select {
	case info := <-ready:
		stopped := false
		var err error
		stop := func() error {
			if !stopped {
				stopped = true
				cancel()
				select {
				case err = <-done:
				case <-time.After(deadline):
					t.Fatal("Serve did not return after its context ended")
				}
			}
			return err
		}
		t.Cleanup(func() { _ = stop() })
		return info, stop
	case err := <-done:
		cancel()
		t.Fatalf("Serve: %v", err)
	case <-time.After(deadline):
		cancel()
		t.Fatal("Serve did not get ready")
	}
	return controller.ServeInfo{}, nil
}

// TestServeExternalBroker runs the whole controller process against
// Mosquitto: an agent made of plain messages gets a dispatch whose URL
// serves the uploaded bundle, and the controller acknowledges its events
// through a broker restart.
func TestServeExternalBroker(t *testing.T) {
	m := brokertest.Mosquitto(t)
	data := t.TempDir()
	info, stop := serve(t, controller.ServeConfig{Data: data, Listen: "127.0.0.1:0", Broker: m.URL(), Prefix: "fleet/v1"})
	if info.Embedded || info.Broker != m.URL() || !strings.HasPrefix(info.PublicURL, "http://127.0.0.1:") || info.PublicURL != info.API {
		t.Fatalf("serve info: %+v", info)
	}
	topics, _ := transport.NewTopics("fleet/v1")
	e := &env{t: t, broker: m.URL(), topics: topics, schemas: schematest.Compile(t)}
	d := e.device("dev-1")
	d.presence(transport.Online, map[string]string{"site": "x"})

	bundle := testBundle(t)
	resp, err := http.Post(info.API+"/v1/bundles", "application/octet-stream", bytes.NewReader(bundle))
	if err != nil {
		t.Fatal(err)
	}
	b := decodeJSON[api.Bundle](t, readAll(t, resp))
	var dep api.Deployment
	eventually(t, "a deployment to dev-1", func() bool {
		resp, err := http.Post(info.API+"/v1/deployments", "application/json", strings.NewReader(`{"bundle":"`+b.SHA256+`","selector":{"site":"x"}}`))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusCreated {
			return false // dev-1's presence may not be in yet
		}
		dep = decodeJSON[api.Deployment](t, body)
		return true
	})
	msg := d.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
	url := msg.Body.(*transport.Dispatch).URL
	if url != info.PublicURL+"/v1/bundles/"+b.SHA256 {
		t.Fatalf("dispatch URL %s", url)
	}
	resp, err = http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); !bytes.Equal(got, bundle) {
		t.Fatalf("download from the dispatch's URL: %d, %d bytes", resp.StatusCode, len(got))
	}

	d.event(1, accepted(dep.ID, msg.ID))
	d.waitAck(1)
	m.Restart()
	eventually(t, "dev-1 connected again", d.client.Connected)
	d.event(2, flowFinished(dep.ID, transport.StatusSucceeded))
	d.waitAck(2)

	eventually(t, "the deployment Succeeded", func() bool {
		resp, err := http.Get(info.API + "/v1/deployments/" + dep.ID)
		if err != nil {
			t.Fatal(err)
		}
		return decodeJSON[api.Deployment](t, readAll(t, resp)).Status == api.DeploymentSucceeded
	})
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after its context ended", err)
	}
	// Stopped: the store is released.
	st, err := store.Open(data, store.Options{})
	if err != nil {
		t.Fatalf("reopen the store after Serve: %v", err)
	}
	st.Close()
}

func TestServeRefusals(t *testing.T) {
	data := t.TempDir()
	serve(t, controller.ServeConfig{Data: data, Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0"})
	err := controller.Serve(bg, controller.ServeConfig{Data: data, Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0"})
	if !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "another controller holds "+data) {
		t.Fatalf("a second controller on the data dir: %v", err)
	}
	for _, cfg := range []controller.ServeConfig{
		{Listen: "127.0.0.1:0"},
		{Data: t.TempDir(), Listen: "127.0.0.1:0", Prefix: "a/+/b"},
		{Data: t.TempDir(), Listen: "127.0.0.1:0", Broker: "nonsense"},
		{Data: t.TempDir(), Listen: "127.0.0.1:0", PublicURL: "ftp://x"},
	} {
		var ce *controller.ConfigError
		if err := controller.Serve(bg, cfg); !errors.As(err, &ce) {
			t.Errorf("%+v: %v, want a ConfigError", cfg, err)
		}
	}
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
