package bench

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/forge-ci/forge/wire"
)

// BenchmarkTransferKnobs is the tool behind the analysis of
// transfer.ratio in docs/benchmarks.md, not part of the results: it
// moves the same 20 MiB over yamux sessions built here with one knob of
// wire's changed at a time, taking turns with plain TLS, and logs each
// variant's median MB/s and its ratio to plain TLS. Run it with
//
//	FORGE_BENCH_KNOBS=1 go test -run '^$' -bench TransferKnobs -benchtime=1x -v ./internal/bench/
//
// The knobs: the stream window (wire.DefaultMaxStreamWindow, 1 MiB), the
// size of each Write on the stream (wire.SendBlob copied through a
// 32 KiB buffer when this was written; it now uses one of the stream
// window's size, 1 MiB), the per-64-KiB write deadline of wire's timeoutConn,
// and writing yamux's 12-byte frame header in the same Write (so the
// same TLS record and system call) as the frame's body.
func BenchmarkTransferKnobs(b *testing.B) {
	if os.Getenv("FORGE_BENCH_KNOBS") == "" {
		b.Skip("set FORGE_BENCH_KNOBS=1 to compare yamux knobs")
	}
	p := newPKI(b)
	data := make([]byte, transferSize)
	rand.Read(data)
	variants := []struct {
		name string
		t    transferer
	}{
		{"plain TLS", plainPair(b, p)},
		{"wire as is: SendBlob, 1 MiB window", yamuxPair(b, p, nil)},
		{"same, built here (check)", knobPair(b, p, knobs{writeSize: 32 << 10})},
		{"no per-64KiB write deadline", knobPair(b, p, knobs{writeSize: 32 << 10, noDeadline: true})},
		{"header+body in one write", knobPair(b, p, knobs{writeSize: 32 << 10, coalesce: true})},
		{"window 256 KiB (yamux default)", knobPair(b, p, knobs{writeSize: 32 << 10, window: 256 << 10})},
		{"window 4 MiB", knobPair(b, p, knobs{writeSize: 32 << 10, window: 4 << 20})},
		{"writes of 256 KiB", knobPair(b, p, knobs{writeSize: 256 << 10})},
		{"writes of 1 MiB", knobPair(b, p, knobs{writeSize: 1 << 20})},
		{"one write of 20 MiB", knobPair(b, p, knobs{writeSize: transferSize})},
		{"writes of 1 MiB + header+body", knobPair(b, p, knobs{writeSize: 1 << 20, coalesce: true})},
		{"writes of 1 MiB + window 4 MiB", knobPair(b, p, knobs{writeSize: 1 << 20, window: 4 << 20})},
	}
	res := make([][]float64, len(variants))
	for i := -2; i < envInt("FORGE_BENCH_TRANSFERS", 15); i++ {
		for j, v := range variants {
			if d := v.t.transfer(b, data); i >= 0 {
				res[j] = append(res[j], mbps(d))
			}
		}
	}
	plain := Percentile(res[0], 0.5)
	for j, v := range variants {
		b.Logf("%-36s %7.1f MB/s  ratio %.2f  (quartiles %.0f-%.0f)", v.name, Percentile(res[j], 0.5),
			Percentile(res[j], 0.5)/plain, Percentile(res[j], 0.25), Percentile(res[j], 0.75))
	}
}

// knobs is one variant of wire's session set-up.
type knobs struct {
	window     uint32 // stream window; 0: wire's default
	writeSize  int    // bytes per Write on the stream
	noDeadline bool   // no write deadline per 64 KiB (wire's timeoutConn)
	coalesce   bool   // a data frame's header goes out with its body
}

// knobPair builds a session pair like wire.Server and wire.Client do,
// with the variant's changes, and an agent side that receives with
// wire.RecvBlob and acknowledges.
func knobPair(b *testing.B, p *pki, k knobs) transferer {
	b.Helper()
	c, s := tcpPair(b)
	ycfg, err := (&wire.SessionConfig{MaxStreamWindowSize: k.window}).YamuxConfig()
	if err != nil {
		b.Fatal(err)
	}
	wrap := func(conn net.Conn) net.Conn {
		if k.coalesce {
			conn = &coalesceConn{Conn: conn}
		}
		if !k.noDeadline {
			conn = &deadlineConn{Conn: conn}
		}
		return conn
	}
	st, ct := tls.Server(s, p.serverTLS()), tls.Client(c, p.clientTLS())
	hs := make(chan error, 1)
	go func() { hs <- st.Handshake() }()
	if err := ct.Handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-hs; err != nil {
		b.Fatal(err)
	}
	coord, err := yamux.Server(wrap(st), ycfg)
	if err != nil {
		b.Fatal(err)
	}
	agent, err := yamux.Client(wrap(ct), ycfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { agent.Close(); coord.Close() })
	go func() {
		for {
			st, err := agent.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				if wire.RecvBlob(st, transferSize, io.Discard) == nil {
					st.Write([]byte{1})
				}
			}()
		}
	}()
	return &knobSide{coord: coord, writeSize: k.writeSize}
}

type knobSide struct {
	coord     *yamux.Session
	writeSize int
}

func (k *knobSide) transfer(b *testing.B, data []byte) time.Duration {
	b.Helper()
	start := time.Now()
	st, err := k.coord.OpenStream()
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(wire.TransferTimeout(transferSize)))
	// Copy through a buffer of writeSize, as SendBlob does (with 1 MiB).
	buf := make([]byte, k.writeSize)
	if _, err := io.CopyBuffer(struct{ io.Writer }{st}, struct{ io.Reader }{bytes.NewReader(data)}, buf); err != nil {
		b.Fatal(err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(st, ack[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// deadlineConn is wire's timeoutConn: a write deadline per 64 KiB.
type deadlineConn struct{ net.Conn }

func (c *deadlineConn) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		end := min(len(b), written+64<<10)
		if err := c.Conn.SetWriteDeadline(time.Now().Add(wire.DefaultWriteTimeout)); err != nil {
			return written, err
		}
		n, err := c.Conn.Write(b[written:end])
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// coalesceConn holds the 12-byte header of a yamux data frame that has a
// body (yamux's send loop writes that body next, from the same goroutine)
// and writes it together with the body.
type coalesceConn struct {
	net.Conn
	hdr  []byte
	buf  []byte
	held bool
}

func (c *coalesceConn) Write(b []byte) (int, error) {
	if !c.held && len(b) == 12 && b[0] == 0 && b[1] == 0 && binary.BigEndian.Uint32(b[8:12]) > 0 {
		c.hdr, c.held = append(c.hdr[:0], b...), true
		return len(b), nil
	}
	if !c.held {
		return c.Conn.Write(b)
	}
	c.held = false
	c.buf = append(append(c.buf[:0], c.hdr...), b...)
	n, err := c.Conn.Write(c.buf)
	return max(n-len(c.hdr), 0), err
}
