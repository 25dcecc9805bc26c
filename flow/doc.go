// Package flow is the flow document of spec/flow.md: its types, decoding
// from YAML or JSON with the line and column of every value, validation that
// reports every problem at once as FILE:LINE:COL: message, and the ${{ }}
// expressions of spec 9.
//
// Decoding walks the YAML node tree itself (JSON is read by the same
// parser), so unknown keys, duplicate keys and values of the wrong shape are
// all reported with their places instead of stopping at the first one.
package flow
