// Package e2e holds the tests that run the coordinator's and the agent's
// real code together (they may not import each other), over real TLS and
// yamux on loopback and against the real Docker engine.
package e2e
