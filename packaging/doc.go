// Package packaging builds, signs, verifies and extracts update bundles: one
// tar file (gzip-compressed or not) that carries a flow document and every
// file it refers to, so a device can prove the bundle is the one an
// operator signed before anything in it runs.
//
// A bundle is, in this order (docs/bundles.md has the details):
//
//	manifest.json   the flow's name, release version, expiry, the devices
//	                and labels it is for, the signing key's id, and the
//	                path, size and sha256 of every payload entry
//	manifest.sig    an Ed25519 signature over the exact bytes of
//	                manifest.json (absent from an unsigned bundle)
//	payload ...     the entries, in manifest order, under their paths
//	                relative to the flow's directory
//
// Build writes one from a flow on disk. Verify and Extract read one as a
// stream, never holding a payload in memory, and check it in this order:
//
//	read manifest ─▶ signature ─▶ manifest shape and limits ─▶ expiry,
//	device, labels, version ─▶ each entry: name, order, type, size, sha256
//	─▶ nothing missing, nothing extra ─▶ (Extract) rename into place
//
// Every refusal is an *onfailure.Error of kind Integrity whose message says
// what was wrong and where. Extract writes into a temporary directory beside
// its destination and renames it into place only when everything passed, so
// a refused bundle leaves nothing behind.
package packaging
