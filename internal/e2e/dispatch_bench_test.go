package e2e

import (
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/dockertest"
)

// BenchmarkDispatch measures what a build pays for Forge's path: from
// creating its service to the executor running in its container, through
// swarm, the agent's Landed report, mTLS + yamux and the agent's inject
// and start. It reports the median and p90 in milliseconds.
func BenchmarkDispatch(b *testing.B) {
	e := newEnv(b)
	var mu sync.Mutex
	var samples []time.Duration
	s := startServer(b, e, b.TempDir(), "", func(d time.Duration) {
		mu.Lock()
		samples = append(samples, d)
		mu.Unlock()
	})
	startAgent(b, e.pki, s.agents, nil, nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := dockertest.ID(b)
		bd := s.submit(b, e, "image: "+e.image+"\nexecute: [\"true\"]\n", id)
		if _, err := s.srv.Builds.Wait(dockertest.Context(b, time.Minute), bd.ID); err != nil {
			b.Fatal(err)
		}
		dockertest.RemoveLabelled(dockertest.Context(b, time.Minute), e.cli, dockertest.LabelTest+"="+id)
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(samples) == 0 {
		return
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(samples[len(samples)/2]), "p50-ms")
	b.ReportMetric(ms(samples[len(samples)*9/10]), "p90-ms")
}
