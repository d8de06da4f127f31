package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/agent"
)

// The real programs: `forge agent` with a wrong join token is refused,
// both logs say why, and it gets no certificate; with no token and no
// certificate it does not start, naming what it lacks.
func TestAgentJoinRefused(t *testing.T) {
	r := startGHRig(t, true)
	dir := t.TempDir()
	wrong := writeGHFile(t, dir, "wrong-token", []byte("forge_join_"+strings.Repeat("x", 43)), 0o600)
	state := filepath.Join(dir, "state")
	p := startGHProgram(t, "agent with a wrong token", "agent", "--coordinator", r.agentAddr,
		"--tls-ca", filepath.Join(r.certs, "ca.pem"), "--join-token-file", wrong, "--state-dir", state)
	ghUntil(t, 30*time.Second, "both sides to log the wrong token", func() bool {
		return strings.Contains(r.coord.out.String(), "wrong join token") && strings.Contains(p.out.String(), "wrong join token")
	})
	if _, err := os.Stat(filepath.Join(state, agent.StateFile)); err == nil {
		t.Error("a refused agent kept a certificate")
	}
	p.stop(t)

	_, err := run(t, "agent", "--coordinator", r.agentAddr, "--tls-ca", filepath.Join(r.certs, "ca.pem"))
	if err == nil || !strings.Contains(err.Error(), "--join-token-file") {
		t.Errorf("agent without a certificate or a token: %v, want an error naming --join-token-file", err)
	}
	_, err = run(t, "agent", "--coordinator", r.agentAddr, "--tls-ca", filepath.Join(r.certs, "ca.pem"),
		"--join-token-file", filepath.Join(dir, "missing"))
	if err == nil || !strings.Contains(err.Error(), "--join-token-file") {
		t.Errorf("agent with a missing token file: %v, want an error naming --join-token-file", err)
	}
	r.done()
}
