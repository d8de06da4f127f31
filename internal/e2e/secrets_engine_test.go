package e2e

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/dockertest"
)

// TestSecretsKeyRotation: a secret set under one key reaches a build
// after the coordinator restarts with a new key and the old one as the
// previous key, and again after a restart with the new key alone; with
// the new key alone before that, the build ends as error saying the
// secret does not open.
func TestSecretsKeyRotation(t *testing.T) {
	e := newEnv(t)
	data := t.TempDir()
	oldKey, newKey := bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x22}, 32)
	agents := "" // the first coordinator's agent address, kept by the next
	start := func(key, previous []byte) *server {
		s := startServerWith(t, e, data, agents, func(cfg *daemon.Config) { cfg.SecretsKey, cfg.SecretsPreviousKey = key, previous })
		if agents == "" {
			agents = s.agents
			startAgent(t, e.pki, agents, nil, nil)
		}
		return s
	}
	id := dockertest.ID(t)
	dockertest.Cleanup(t, e.cli, id)
	value := "r0tate-" + id
	yml := "image: " + e.image + "\nsecrets: [ROTATED]\nexecute: ['test \"$ROTATED\" = " + value + " && echo the secret arrived']\n"
	build := func(s *server) (*coordinator.Build, string) {
		t.Helper()
		b := s.submit(t, e, yml, id)
		final, err := s.srv.Builds.Wait(dockertest.Context(t, 2*time.Minute), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		return final, buildLog(t, s, b.ID)
	}

	s := start(oldKey, nil)
	resp := adminBody(t, http.MethodPut, s.http+"/api/repos/acme/widgets/secrets/ROTATED", strings.NewReader(value))
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		t.Fatalf("set the secret: %s", resp.Status)
	}
	s.stop()

	s = start(newKey, nil)
	final, _ := build(s)
	if final.State != coordinator.Error || !strings.Contains(final.Reason, "does not open with this --secrets-key-file") {
		t.Errorf("with the new key alone, before the rekey: %s (%s)", final.State, final.Reason)
	}
	s.stop()

	for _, previous := range [][]byte{oldKey, nil} {
		s = start(newKey, previous)
		final, log := build(s)
		if final.State != coordinator.Success || !strings.Contains(log, "the secret arrived") || strings.Contains(log, value) {
			t.Errorf("new key, previous key given: %v: %s (%s), log:\n%s", previous != nil, final.State, final.Reason, log)
		}
		s.stop()
	}
}
