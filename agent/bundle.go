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
	// Before is the release of the flow that was installed when the
	// execution started, journaled with it so that undoing the execution
	// puts it back; nil in the records of agents that predate it
	// (unknown: an undo then leaves the installed release as it is).
	Before *installedRelease `json:"before,omitempty"`
}

// installedRelease is the installed release of a flow: Version, or none.
type installedRelease struct {
	Version   uint64 `json:"version,omitempty"`
	Installed bool   `json:"installed"`
}

// applyBundle verifies the bundle at opts.Flow against the device's policy
// (trusted keys, expiry, device id and labels, the installed version),
// extracts it under the state dir and runs its flow. A refused bundle
// runs nothing: it is journaled and reported as a Failed execution with
// the refusal's Integrity error.
func applyBundle(ctx context.Context, opts ApplyOptions) (*engine.Result, error) {
	var x *extracted
	s, err := openSession(opts.Config, nil, opts.Vars, opts.Observe, func(s *session) (err error) {
		s.guided, s.strategies = opts.GuidedFailure, opts.FlowStrategies
		x, err = extractBundle(s, opts.Flow, bundlePolicy{TrustedKeys: opts.TrustedKeys, AllowReinstall: opts.AllowReinstall})
		return err
	})
	if err != nil {
		return nil, err
	}
	defer s.close()
	if x.refused != nil {
		res, jerr := s.eng.Reject(x.name, x.refused)
		s.done(jerr)
		return res, jerr
	}
	res, err := s.eng.Run(ctx, x.flow)
	var pe *engine.PreflightError
	if errors.As(err, &pe) {
		_ = os.RemoveAll(x.dir)
		return nil, &UsageError{Err: err}
	}
	s.done(err)
	return res, err
}

// bundlePolicy is what a device accepts of a bundle beyond its own
// identity (device id and labels, from the session's config).
type bundlePolicy struct {
	// TrustedKeys may sign bundles; with any, a bundle must be signed by
	// one of them.
	TrustedKeys []packaging.PublicKey
	// AllowReinstall accepts a bundle of the release already installed.
	AllowReinstall bool
}

// extracted is a bundle verified and extracted for a session, or refused.
type extracted struct {
	// name is the flow name the bundle claims (its refusal is journaled
	// under it).
	name string
	flow *flow.Flow
	// dir is where it was extracted.
	dir string
	// refused is the Integrity error of a bundle the policy refuses;
	// flow is nil then.
	refused error
}

// extractBundle verifies the bundle at path against the device's policy
// and extracts it under the state dir; it sets the session's release. A
// refusal is returned in extracted.refused (nothing is left behind); an
// error is a failure to check at all (the journal, the disk) or an
// invalid flow document (*UsageError).
func extractBundle(s *session, path string, p bundlePolicy) (*extracted, error) {
	x := &extracted{name: bundleFlowName(path)}
	installed, isInstalled, err := s.j.Installed(x.name)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(s.cfg.StateDir, BundlesDir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, onfailure.Wrap("bundles dir", err)
	}
	x.dir = filepath.Join(root, time.Now().UTC().Format("20060102T150405Z")+"-"+randomHex(4))
	b, err := packaging.Extract(path, x.dir, packaging.VerifyOptions{
		Trusted: p.TrustedKeys, DeviceID: s.cfg.DeviceID, Labels: s.cfg.Labels,
		Installed: installed, AllowReinstall: p.AllowReinstall,
	})
	if err == nil && b.Manifest.Flow != x.name {
		err = onfailure.Errorf(onfailure.Integrity, "bundle %s: its manifest changed while it was read", path)
	}
	if err == nil {
		if x.flow, err = flow.Load(b.FlowPath()); err != nil {
			_ = os.RemoveAll(x.dir)
			return nil, &UsageError{Err: err}
		}
		if x.flow.Name != b.Manifest.Flow {
			err = onfailure.Errorf(onfailure.Integrity, "bundle %s: the manifest is for flow %q, the flow document is %q", path, b.Manifest.Flow, x.flow.Name)
		}
	}
	if err != nil {
		_ = os.RemoveAll(x.dir)
		if onfailure.KindOf(err) != onfailure.Integrity {
			return nil, err
		}
		x.flow, x.refused = nil, err
		return x, nil
	}
	s.release = &release{Flow: x.flow.Name, Version: b.Manifest.Version,
		Before: &installedRelease{Version: installed, Installed: isInstalled}}
	return x, nil
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
// bundle's version as installed are written in one transaction; when an
// undo of it ends RolledBack, the final record and the release installed
// before it (release.Before) are. A session's final hook (the daemon's
// rolled-back event) joins the final record's transaction too.
type releaseStore struct {
	engine.Store
	j *journal.Journal
	s *session
}

func (r *releaseStore) SaveExecution(id string, rec []byte, unfinished bool) error {
	rel, final := r.s.release, r.s.final
	if unfinished || (rel == nil && final == nil) {
		return r.Store.SaveExecution(id, rec, unfinished)
	}
	var st struct {
		Status engine.Status      `json:"status"`
		Undo   *engine.UndoRecord `json:"undo"`
	}
	if err := json.Unmarshal(rec, &st); err != nil {
		return fmt.Errorf("journal: read status of %s: %w", id, err)
	}
	if final == nil && st.Undo == nil {
		if st.Status == engine.Succeeded {
			return r.j.SaveExecutionInstalled(id, rec, rel.Flow, rel.Version)
		}
		return r.Store.SaveExecution(id, rec, unfinished)
	}
	return r.j.Update(func(tx *journal.Tx) error {
		if err := tx.PutExecutionFinished(id, rec); err != nil {
			return err
		}
		if rel != nil {
			if err := restoreRelease(tx, rel, st.Status, st.Undo != nil); err != nil {
				return err
			}
		}
		if final != nil {
			return final(tx, rec)
		}
		return nil
	})
}

// restoreRelease records, inside tx, what an execution of rel that ended
// in status does to the installed release: a Succeeded run installs
// rel.Version (unless a higher one is recorded); an undo that ended
// RolledBack puts back the release installed before, if rel.Version is
// still the one recorded. An undo that ended RollbackFailed leaves the
// installed release alone: the device may hold part of rel still.
func restoreRelease(tx *journal.Tx, rel *release, status engine.Status, undone bool) error {
	v, ok, err := tx.Installed(rel.Flow)
	if err != nil {
		return err
	}
	switch {
	case !undone && status == engine.Succeeded && (!ok || v < rel.Version):
		return tx.SetInstalled(rel.Flow, rel.Version, true)
	case undone && status == engine.RolledBack && rel.Before != nil && ok && v == rel.Version:
		return tx.SetInstalled(rel.Flow, rel.Before.Version, rel.Before.Installed)
	}
	return nil
}
