package e2e

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/syncbuf"
)

// The coordinator says when the CA's and its own certificate run out: a
// warning in its log under 30 days (this rig's CA lasts an hour), and the
// Unix times in /metrics, with each connected agent's.
func TestCertificateExpiryWatched(t *testing.T) {
	e := newEnv(t)
	log := &syncbuf.Buffer{}
	s := startServerWith(t, e, t.TempDir(), "", func(cfg *daemon.Config) {
		cfg.Identity.CA = e.pki.CA.Cert
		cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	})
	startAgent(t, e.pki, s.agents, nil, nil)
	for _, name := range []string{"certificate=CA", "certificate=coordinator"} {
		eventually(t, 10*time.Second, "a warning with "+name, func() bool {
			return strings.Contains(log.String(), `msg="certificate expires soon`) && strings.Contains(log.String(), name)
		})
	}
	want := []string{
		// Prometheus writes floats as strconv's 'g' does.
		"forge_ca_cert_expiry_seconds " + strconv.FormatFloat(float64(e.pki.CA.Cert.NotAfter.Unix()), 'g', -1, 64),
		"forge_coordinator_cert_expiry_seconds ",
		fmt.Sprintf(`forge_agent_cert_expiry_seconds{node=%q}`, e.node),
	}
	var body string
	eventually(t, 10*time.Second, "the expiry metrics", func() bool {
		resp, err := http.Get(s.metrics + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
}

// eventually polls cond until it holds, failing the test after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
