package wire_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	. "github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// knobsSize is the blob each transfer moves, as in internal/bench's
// BenchmarkTransfer.
const knobsSize = 20 << 20

// BenchmarkTransferKnobs is the tool behind the analysis of
// transfer.ratio in docs/benchmarks.md, not part of the results: it
// moves the same 20 MiB over yamux sessions built here with one knob of
// wire's changed at a time, taking turns with plain TLS, and logs each
// variant's median MB/s and its ratio to plain TLS. It lives in wire
// because it builds yamux sessions by hand. Run it with
//
//	FORGE_BENCH_KNOBS=1 go test -run '^$' -bench TransferKnobs -benchtime=1x -v ./wire/
//
// The knobs: the stream window (DefaultMaxStreamWindow, 1 MiB), the
// size of each Write on the stream (SendBlob copied through a 32 KiB
// buffer when this was written; it now uses one of the stream window's
// size, 1 MiB), the per-64-KiB write deadline of wire's timeoutConn, and
// writing yamux's 12-byte frame header in the same Write (so the same TLS
// record and system call) as the frame's body.
func BenchmarkTransferKnobs(b *testing.B) {
	if os.Getenv("FORGE_BENCH_KNOBS") == "" {
		b.Skip("set FORGE_BENCH_KNOBS=1 to compare yamux knobs")
	}
	p := wiretest.MustPKI(b)
	data := make([]byte, knobsSize)
	rand.Read(data)
	variants := []struct {
		name string
		t    transferer
	}{
		{"plain TLS", plainPair(b, p)},
		{"wire as is: SendBlob, 1 MiB window", sessionPair(b, p)},
		{"same, built here (check)", knobPair(b, p, knobs{writeSize: 32 << 10})},
		{"no per-64KiB write deadline", knobPair(b, p, knobs{writeSize: 32 << 10, noDeadline: true})},
		{"header+body in one write", knobPair(b, p, knobs{writeSize: 32 << 10, coalesce: true})},
		{"window 256 KiB (yamux default)", knobPair(b, p, knobs{writeSize: 32 << 10, window: 256 << 10})},
		{"window 4 MiB", knobPair(b, p, knobs{writeSize: 32 << 10, window: 4 << 20})},
		{"writes of 256 KiB", knobPair(b, p, knobs{writeSize: 256 << 10})},
		{"writes of 1 MiB", knobPair(b, p, knobs{writeSize: 1 << 20})},
		{"one write of 20 MiB", knobPair(b, p, knobs{writeSize: knobsSize})},
		{"writes of 1 MiB + header+body", knobPair(b, p, knobs{writeSize: 1 << 20, coalesce: true})},
		{"writes of 1 MiB + window 4 MiB", knobPair(b, p, knobs{writeSize: 1 << 20, window: 4 << 20})},
	}
	reps := 15
	if v, err := strconv.Atoi(os.Getenv("FORGE_BENCH_TRANSFERS")); err == nil && v > 0 {
		reps = v
	}
	res := make([][]float64, len(variants))
	for i := -2; i < reps; i++ {
		for j, v := range variants {
			if d := v.t.transfer(b, data); i >= 0 {
				res[j] = append(res[j], knobsSize/d.Seconds()/1e6)
			}
		}
	}
	plain := quantile(res[0], 0.5)
	for j, v := range variants {
		b.Logf("%-36s %7.1f MB/s  ratio %.2f  (quartiles %.0f-%.0f)", v.name, quantile(res[j], 0.5),
			quantile(res[j], 0.5)/plain, quantile(res[j], 0.25), quantile(res[j], 0.75))
	}
}

// quantile is the q-quantile of xs, interpolated between samples (as
// internal/bench's Percentile).
func quantile(xs []float64, q float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	pos := q * float64(len(s)-1)
	lo := int(pos)
	hi := min(lo+1, len(s)-1)
	return s[lo] + (pos-float64(lo))*(s[hi]-s[lo])
}

type transferer interface {
	transfer(b *testing.B, data []byte) time.Duration
}

// receive is the agent's side of every variant: it takes one blob and
// acknowledges it with one byte.
func receive(rw io.ReadWriter) error {
	if err := RecvBlob(rw, knobsSize, io.Discard); err != nil {
		return err
	}
	_, err := rw.Write([]byte{1})
	return err
}

// sendTimed opens a stream with open, sends data with send and waits for
// the acknowledgement: the time of one transfer.
func sendTimed(b *testing.B, open func() (io.ReadWriteCloser, error), send func(io.Writer, []byte) error, data []byte) time.Duration {
	b.Helper()
	start := time.Now()
	st, err := open()
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := send(st, data); err != nil {
		b.Fatal(err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(st, ack[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func sendBlob(w io.Writer, data []byte) error {
	return SendBlob(w, bytes.NewReader(data), int64(len(data)))
}

// plainSide is one TLS connection; the agent's side receives in a loop.
type plainSide struct{ coord net.Conn }

func plainPair(b *testing.B, p *wiretest.PKI) transferer {
	agent, coord := p.MustTLSConns(b)
	go func() { // owner: the benchmark; ends when Cleanup closes the connection
		for receive(agent) == nil {
		}
	}()
	return plainSide{coord}
}

func (s plainSide) transfer(b *testing.B, data []byte) time.Duration {
	open := func() (io.ReadWriteCloser, error) {
		s.coord.SetDeadline(time.Now().Add(TransferTimeout(knobsSize)))
		return struct {
			io.ReadWriter
			io.Closer
		}{s.coord, io.NopCloser(nil)}, nil
	}
	return sendTimed(b, open, sendBlob, data)
}

// sessionSide is wire's session, as Client and Server make it.
type sessionSide struct{ coord *Session }

func sessionPair(b *testing.B, p *wiretest.PKI) transferer {
	agent, coord := p.MustPair(b, nil)
	go func() { // owner: the benchmark; ends when Cleanup closes the session
		for {
			st, err := agent.Accept(context.Background())
			if err != nil {
				return
			}
			go func() { defer st.Close(); receive(st) }() // owner: the stream's end
		}
	}()
	return sessionSide{coord}
}

func (s sessionSide) transfer(b *testing.B, data []byte) time.Duration {
	open := func() (io.ReadWriteCloser, error) {
		ctx, cancel := context.WithTimeout(context.Background(), TransferTimeout(knobsSize))
		st, err := s.coord.Open(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		return struct {
			io.ReadWriter
			io.Closer
		}{st, closerFunc(func() error { defer cancel(); return st.Close() })}, nil
	}
	return sendTimed(b, open, sendBlob, data)
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// knobs is one variant of wire's session set-up.
type knobs struct {
	window     uint32 // stream window; 0: wire's default
	writeSize  int    // bytes per Write on the stream
	noDeadline bool   // no write deadline per 64 KiB (wire's timeoutConn)
	coalesce   bool   // a data frame's header goes out with its body
}

// knobPair builds a session pair like Server and Client do, with the
// variant's changes, and an agent side that receives with RecvBlob and
// acknowledges.
func knobPair(b *testing.B, p *wiretest.PKI, k knobs) transferer {
	b.Helper()
	ycfg, err := (&SessionConfig{MaxStreamWindowSize: k.window}).YamuxConfig()
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
	ct, st := p.MustTLSConns(b)
	coord, err := yamux.Server(wrap(st), ycfg)
	if err != nil {
		b.Fatal(err)
	}
	agent, err := yamux.Client(wrap(ct), ycfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { agent.Close(); coord.Close() })
	go func() { // owner: the benchmark; ends when Cleanup closes the session
		for {
			st, err := agent.AcceptStream()
			if err != nil {
				return
			}
			go func() { defer st.Close(); receive(st) }() // owner: the stream's end
		}
	}()
	return &knobSide{coord: coord, writeSize: k.writeSize}
}

type knobSide struct {
	coord     *yamux.Session
	writeSize int
}

func (k *knobSide) transfer(b *testing.B, data []byte) time.Duration {
	open := func() (io.ReadWriteCloser, error) {
		st, err := k.coord.OpenStream()
		if err != nil {
			return nil, err
		}
		return st, st.SetDeadline(time.Now().Add(TransferTimeout(knobsSize)))
	}
	// Copy through a buffer of writeSize, as SendBlob does (with 1 MiB).
	send := func(w io.Writer, data []byte) error {
		_, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{bytes.NewReader(data)}, make([]byte, k.writeSize))
		return err
	}
	return sendTimed(b, open, send, data)
}

// deadlineConn is wire's timeoutConn: a write deadline per 64 KiB.
type deadlineConn struct{ net.Conn }

func (c *deadlineConn) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		end := min(len(b), written+64<<10)
		if err := c.Conn.SetWriteDeadline(time.Now().Add(DefaultWriteTimeout)); err != nil {
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
