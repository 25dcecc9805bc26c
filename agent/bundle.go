package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/packaging"
)

// BundlesDir is where, under the state dir, bundles are extracted: one
// directory per run, kept with its execution and pruned with it.
const BundlesDir = "bundles"

// release is the bundle an execution runs: its flow name and release
// version, recorded as installed when the execution succeeds.
type release struct {
	Flow    string `json:"flow"`
	Version uint64 `json:"version"`
}

// applyBundle verifies the bundle at opts.Flow against the device's policy
// (trusted keys, expiry, device id and labels, the installed version),
// extracts it under the state dir and runs its flow. A refused bundle
// runs nothing: it is journaled and reported as a Failed execution with
// the refusal's Integrity error.
func applyBundle(ctx context.Context, opts ApplyOptions) (*engine.Result, error) {
	name := bundleFlowName(opts.Flow)
	var (
		f       *flow.Flow
		dir     string
		refused error // an Integrity refusal, journaled once the engine is up
	)
	s, err := openSession(opts.Config, opts.Vars, opts.Observe, func(s *session) error {
		installed, _, err := s.j.Installed(name)
		if err != nil {
			return err
		}
		root := filepath.Join(opts.StateDir, BundlesDir)
		if err := os.MkdirAll(root, 0o700); err != nil {
			return onfailure.Wrap("bundles dir", err)
		}
		dir = filepath.Join(root, time.Now().UTC().Format("20060102T150405Z")+"-"+randomHex(4))
		b, err := packaging.Extract(opts.Flow, dir, packaging.VerifyOptions{
			Trusted: opts.TrustedKeys, DeviceID: opts.DeviceID, Labels: opts.Labels,
			Installed: installed, AllowReinstall: opts.AllowReinstall,
		})
		if err == nil && b.Manifest.Flow != name {
			err = onfailure.Errorf(onfailure.Integrity, "bundle %s: its manifest changed while it was read", opts.Flow)
		}
		if err == nil {
			if f, err = flow.Load(b.FlowPath()); err != nil {
				_ = os.RemoveAll(dir)
				return &UsageError{Err: err}
			}
			if f.Name != b.Manifest.Flow {
				err = onfailure.Errorf(onfailure.Integrity, "bundle %s: the manifest is for flow %q, the flow document is %q", opts.Flow, b.Manifest.Flow, f.Name)
			}
		}
		if err != nil {
			_ = os.RemoveAll(dir)
			if onfailure.KindOf(err) != onfailure.Integrity {
				return err
			}
			refused = err
			return nil
		}
		s.release = &release{Flow: f.Name, Version: b.Manifest.Version}
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer s.close()
	if refused != nil {
		res, jerr := s.eng.Reject(name, refused)
		s.done(jerr)
		return res, jerr
	}
	res, err := s.eng.Run(ctx, f)
	var pe *engine.PreflightError
	if errors.As(err, &pe) {
		_ = os.RemoveAll(dir)
		return nil, &UsageError{Err: err}
	}
	s.done(err)
	return res, err
}

// bundleFlowName is the flow name the bundle's manifest claims (checked
// when the bundle is extracted), or the file's name when it has none that
// can be read: the name its refusal is journaled under.
func bundleFlowName(path string) string {
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		if b, err := packaging.Inspect(f, packaging.Limits{}); err == nil && b.Manifest.Flow != "" {
			return b.Manifest.Flow
		}
	}
	return strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// releaseStore is the engine's journal for a session: when the session
// runs a bundle and its execution ends Succeeded, the final record and the
// bundle's version as installed are written in one transaction.
type releaseStore struct {
	engine.Store
	j *journal.Journal
	s *session
}

func (r *releaseStore) SaveExecution(id string, rec []byte, unfinished bool) error {
	if rel := r.s.release; rel != nil && !unfinished {
		var st struct {
			Status engine.Status `json:"status"`
		}
		if err := json.Unmarshal(rec, &st); err != nil {
			return fmt.Errorf("journal: read status of %s: %w", id, err)
		}
		if st.Status == engine.Succeeded {
			return r.j.SaveExecutionInstalled(id, rec, rel.Flow, rel.Version)
		}
	}
	return r.Store.SaveExecution(id, rec, unfinished)
}
