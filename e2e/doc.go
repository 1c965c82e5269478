// Package e2e holds chatd's end-to-end tests: they build the real binary,
// start it as a separate process on a loopback port (internal/testsvc) and
// talk to it only over the network, with the official phoenix JS client
// (js/compat.mjs, run by node) and with a Go WebSocket client.
//
// They need node and the npm packages of js/ (./scripts/deps.sh installs
// both); without them the tests fail rather than skip.
package e2e
