package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// transferSize is the archive moved from coordinator to agent.
const transferSize = 20 << 20

// BenchmarkTransfer moves a 20 MiB archive from the coordinator (the TLS
// and yamux server) to an agent (the client) over mTLS + yamux with the
// default SessionConfig, one stream per transfer, SendBlob on one side and
// RecvBlob on the other, and the same bytes with the same helpers over one
// plain TLS 1.3 connection with the same certificates. A transfer is timed
// from before the stream is opened to the receiver's one-byte
// acknowledgement that it has every byte. The two kinds alternate; each
// reports the median of FORGE_BENCH_TRANSFERS (15) transfers after 3
// untimed ones, and the CPU time both sides (this process) spent per MiB.
func BenchmarkTransfer(b *testing.B) {
	reps := envInt("FORGE_BENCH_TRANSFERS", 15)
	p := wiretest.MustPKI(b)
	data := make([]byte, transferSize)
	rand.Read(data)

	ys := yamuxPair(b, p, nil, transferSize)
	plain := plainPair(b, p, transferSize)

	var yam, pl []float64
	var ycpu, pcpu time.Duration // CPU time of this process (both sides)
	for i := -3; i < reps; i++ {
		c0 := rusage()
		dy := ys.transfer(b, data)
		c1 := rusage()
		dp := plain.transfer(b, data)
		c2 := rusage()
		if i >= 0 {
			yam = append(yam, mbps(dy))
			pl = append(pl, mbps(dp))
			ycpu += c1 - c0
			pcpu += c2 - c1
		}
	}
	y50, p50 := Percentile(yam, 0.5), Percentile(pl, 0.5)
	b.ReportMetric(y50, "yamux-MB/s")
	b.ReportMetric(p50, "plain-MB/s")
	b.ReportMetric(y50/p50, "ratio")
	perMiB := func(d time.Duration) float64 {
		return float64(d) / float64(time.Millisecond) / float64(reps) / (transferSize >> 20)
	}
	record(b, map[string]any{
		"transfer.yamux_mb_s":           y50,
		"transfer.plain_mb_s":           p50,
		"transfer.ratio":                y50 / p50,
		"transfer.yamux_cpu_ms_per_mib": perMiB(ycpu),
		"transfer.plain_cpu_ms_per_mib": perMiB(pcpu),
	})
}

// rusage is the user + system CPU time this process has used.
func rusage() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func mbps(d time.Duration) float64 { return transferSize / d.Seconds() / 1e6 }

type transferer interface {
	transfer(b *testing.B, data []byte) time.Duration
}

// yamuxSide is a coordinator's session with one agent, whose side accepts
// each stream, receives a blob of size bytes and acknowledges it.
type yamuxSide struct{ coord *wire.Session }

func yamuxPair(b *testing.B, p *wiretest.PKI, cfg *wire.SessionConfig, size int64) *yamuxSide {
	b.Helper()
	agent, coord := p.MustPair(b, cfg)
	go func() {
		for {
			st, err := agent.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				if err := wire.RecvBlob(st, size, io.Discard); err != nil {
					return
				}
				st.Write([]byte{1})
			}()
		}
	}()
	return &yamuxSide{coord: coord}
}

func (y *yamuxSide) transfer(b *testing.B, data []byte) time.Duration {
	b.Helper()
	return y.send(b, bytes.NewReader(data), int64(len(data)))
}

// send moves size bytes of r on a stream of its own, timed from the
// stream's opening to the acknowledgement.
func (y *yamuxSide) send(b *testing.B, r io.Reader, size int64) time.Duration {
	b.Helper()
	d, err := y.trySend(r, size)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// trySend is send for goroutines other than the benchmark's.
func (y *yamuxSide) trySend(r io.Reader, size int64) (time.Duration, error) {
	start := time.Now()
	st, err := y.coord.Open(context.Background())
	if err != nil {
		return 0, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(wire.TransferTimeout(size)))
	if err := wire.SendBlob(st, r, size); err != nil {
		return 0, err
	}
	var ack [1]byte
	if _, err := io.ReadFull(st, ack[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// plainSide is one TLS connection: the coordinator writes, the agent
// reads size bytes and acknowledges, again and again.
type plainSide struct{ coord *tls.Conn }

func plainPair(b *testing.B, p *wiretest.PKI, size int64) *plainSide {
	b.Helper()
	agent, coord := p.MustTLSConns(b)
	go func() {
		for {
			if err := wire.RecvBlob(agent, size, io.Discard); err != nil {
				return
			}
			if _, err := agent.Write([]byte{1}); err != nil {
				return
			}
		}
	}()
	return &plainSide{coord: coord}
}

func (p *plainSide) transfer(b *testing.B, data []byte) time.Duration {
	b.Helper()
	return p.send(b, bytes.NewReader(data), int64(len(data)))
}

// send moves size bytes of r, timed to the acknowledgement.
func (p *plainSide) send(b *testing.B, r io.Reader, size int64) time.Duration {
	b.Helper()
	start := time.Now()
	p.coord.SetDeadline(time.Now().Add(wire.TransferTimeout(size)))
	if err := wire.SendBlob(p.coord, r, size); err != nil {
		b.Fatal(err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(p.coord, ack[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// envInt reads a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
