package bench

import (
	"bytes"
	"crypto/rand"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// bulkSize is what BenchmarkBulkStreams moves: the restored cache's size.
const bulkSize int64 = 200 << 20

// BenchmarkBulkStreams is the tool behind the analysis of
// cache.restore_ratio in docs/benchmarks.md, not part of the results: it
// moves 200 MiB from the coordinator's side of a wire session to the
// agent's, split over 1, 2 or 4 streams at once (each stream a part, sent
// and read by goroutines of its own), with stream windows of 1, 4 or 16
// MiB, taking turns with plain TLS, and logs each variant's median MB/s,
// its ratio to plain TLS and this process's CPU time per MiB. Run it with
//
//	FORGE_BENCH_KNOBS=1 go test -run '^$' -bench BulkStreams -benchtime=1x -v ./internal/bench/
func BenchmarkBulkStreams(b *testing.B) {
	if os.Getenv("FORGE_BENCH_KNOBS") == "" {
		b.Skip("set FORGE_BENCH_KNOBS=1 to compare ways of carrying bulk bytes")
	}
	rounds := envInt("FORGE_BENCH_TRANSFERS", 9)
	p := wiretest.MustPKI(b)
	data := make([]byte, bulkSize)
	rand.Read(data)
	type variant struct {
		name    string
		streams int
		coord   *wire.Session
	}
	var vs []*variant
	for _, v := range []struct {
		name    string
		window  uint32
		streams int
	}{
		{"1 stream, 1 MiB window (wire as is)", 1 << 20, 1}, {"2 streams, 1 MiB", 1 << 20, 2}, {"4 streams, 1 MiB", 1 << 20, 4},
		{"1 stream, 4 MiB", 4 << 20, 1}, {"2 streams, 4 MiB", 4 << 20, 2}, {"1 stream, 16 MiB", 16 << 20, 1},
	} {
		ys := yamuxPair(b, p, &wire.SessionConfig{MaxStreamWindowSize: v.window}, bulkSize/int64(v.streams))
		vs = append(vs, &variant{name: v.name, streams: v.streams, coord: ys.coord})
	}
	plain := plainPair(b, p, bulkSize)
	rates := map[string][]float64{}
	cpu := map[string]time.Duration{}
	measure := func(name string, f func()) {
		c0, start := rusage(), time.Now()
		f()
		rates[name] = append(rates[name], float64(bulkSize)/time.Since(start).Seconds()/1e6)
		cpu[name] += rusage() - c0
	}
	for range rounds {
		measure("plain TLS", func() { plain.transfer(b, data) })
		for _, v := range vs {
			measure(v.name, func() { sendParts(b, v.coord, data, v.streams) })
		}
	}
	base := Percentile(rates["plain TLS"], 0.5)
	for _, name := range append([]string{"plain TLS"}, func() (ns []string) {
		for _, v := range vs {
			ns = append(ns, v.name)
		}
		return ns
	}()...) {
		m := Percentile(rates[name], 0.5)
		b.Logf("%-36s %6.0f MB/s  ratio %.2f  CPU %.2f ms/MiB", name, m, m/base, float64(cpu[name])/1e6/float64(rounds)/float64(bulkSize>>20))
	}
}

// sendParts sends data over n streams at once, a part each, and waits for
// every part's acknowledgement.
func sendParts(b *testing.B, s *wire.Session, data []byte, n int) {
	ys, part := &yamuxSide{coord: s}, len(data)/n
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := ys.trySend(bytes.NewReader(data[i*part:(i+1)*part]), int64(part)); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
}
