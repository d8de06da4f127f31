package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// sessionPair starts a client and a server session over conns.
func sessionPair(t *testing.T, a, c net.Conn, cfg *SessionConfig) (client, server *yamux.Session) {
	t.Helper()
	errs := runBoth(t, func() { a.Close(); c.Close() },
		func() (err error) { client, err = Client(a, cfg); return err },
		func() (err error) { server, err = Server(c, cfg); return err })
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestYamuxAloneLeavesHalfDeadSession pins down the yamux v0.1.2 behaviour
// this package works around (hashicorp/yamux#142): with a peer that stops
// reading, a stream operation fails with ErrConnectionWriteTimeout but the
// session stays open, its sender stuck in conn.Write for good (keep-alives
// off here; with them on it takes KeepAliveInterval+ConnectionWriteTimeout).
// If this test fails after a yamux upgrade, yamux has changed and the
// comment at the top of session.go needs revisiting.
func TestYamuxAloneLeavesHalfDeadSession(t *testing.T) {
	a, b := net.Pipe() // nobody ever reads b
	defer b.Close()
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 50 * time.Millisecond
	cfg.LogOutput = io.Discard
	s, err := yamux.Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close() // closes a, which unblocks yamux's sender

	_, err = s.OpenStream()
	if !errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		t.Fatalf("OpenStream: got %v, want ErrConnectionWriteTimeout", err)
	}
	select {
	case <-s.CloseChan():
		t.Fatal("yamux closed the session by itself: the workaround in session.go may be obsolete")
	case <-time.After(10 * cfg.ConnectionWriteTimeout):
	}
}

// TestWriteTimeoutClosesSession: the same stalled peer, through Client,
// closes the whole session within the write timeout.
func TestWriteTimeoutClosesSession(t *testing.T) {
	a, b := net.Pipe() // nobody ever reads b
	defer b.Close()
	cfg := &SessionConfig{WriteTimeout: 100 * time.Millisecond, KeepAliveInterval: time.Hour}
	s, err := Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	start := time.Now()
	if st, err := s.OpenStream(); err == nil { // its SYN cannot be written
		// yamux may report the open before the SYN is out; a write then
		// fails within the write timeout.
		NewCodec(st).Send(&LogAck{Seq: 1})
	}
	waitClosed(t, s.CloseChan(), testTimeout, "session after write timeout")
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("closed after %s", elapsed)
	}
	// The session's end is reported with the cause.
	if _, err := s.AcceptStream(); !errors.Is(err, ErrWriteTimeout) && !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Errorf("AcceptStream after close: %v", err)
	}
}

// TestWriteTimeoutOverStalledTCP: over TCP the kernel buffers hide a
// stalled peer for a while; once they are full the write deadline fires
// and the session closes.
func TestWriteTimeoutOverStalledTCP(t *testing.T) {
	var wg sync.WaitGroup
	defer wg.Wait() // deferred first, so it runs after the sessions are closed
	a, c := tcpPair(t)
	p := newStallProxy(t, c)
	defer p.close()
	// Small windows would not fill the socket buffers quickly, so use many
	// streams, each allowed to send a full window without the peer reading.
	cfg := &SessionConfig{WriteTimeout: 200 * time.Millisecond, KeepAliveInterval: time.Hour, StreamOpenTimeout: time.Hour}
	client, err := Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(p.far, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	p.stall()

	chunk := make([]byte, 256<<10)
	for range 128 { // 128 x 256 KiB = 32 MiB, far beyond loopback socket buffers
		st, err := client.OpenStream()
		if err != nil {
			break // the session may already be closed
		}
		wg.Add(1)
		go func() { // owner: this test, via wg; ends when the session closes
			defer wg.Done()
			st.SetWriteDeadline(time.Now().Add(testTimeout))
			st.Write(chunk)
		}()
	}
	waitClosed(t, client.CloseChan(), testTimeout, "client session over stalled TCP")
}

// TestStreamWriteTimeoutClosesSession: when a stream operation itself
// returns ErrConnectionWriteTimeout, the Codec closes the session.
func TestStreamWriteTimeoutClosesSession(t *testing.T) {
	a, c := net.Pipe()
	client, server := sessionPair(t, a, c, nil)
	go func() { // owner: the session; AcceptStream fails when it closes
		for {
			if _, err := server.AcceptStream(); err != nil {
				return
			}
		}
	}()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	err = CloseSessionOnWriteTimeout(st, fmt.Errorf("send log: %w", yamux.ErrConnectionWriteTimeout))
	if !errors.Is(err, ErrWriteTimeout) || !errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		t.Errorf("got %v", err)
	}
	waitClosed(t, client.CloseChan(), testTimeout, "client session")
	if err := CloseSessionOnWriteTimeout(st, io.EOF); err != io.EOF {
		t.Errorf("other errors pass unchanged, got %v", err)
	}
}

// slowConn makes every write take a while but succeed, like a congested
// link that still moves: the connection deadline never fires, yet frames
// queue in yamux longer than the write timeout.
type slowConn struct {
	net.Conn
	delay  time.Duration
	closed chan struct{} // closed by Close: a pending Write stops waiting
	once   sync.Once
}

func newSlowConn(c net.Conn, delay time.Duration) *slowConn {
	return &slowConn{Conn: c, delay: delay, closed: make(chan struct{})}
}

// Write waits c.delay, or until the conn is closed (then the write fails
// as on any closed conn): every wait honours a deadline or a close.
func (c *slowConn) Write(b []byte) (int, error) {
	timer := time.NewTimer(c.delay)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-c.closed:
	}
	return c.Conn.Write(b)
}

func (c *slowConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestCongestionClosesSession reproduces hashicorp/yamux#142: with the
// session's send queue backed up past the write timeout, a stream write
// returns ErrConnectionWriteTimeout while the connection is alive. Through
// the Codec, that closes the session instead of leaving the stream's bytes
// in doubt.
func TestCongestionClosesSession(t *testing.T) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after the sessions are closed (cleanups run last-in first-out)
	a, c := tcpPair(t)
	cfg := &SessionConfig{WriteTimeout: 300 * time.Millisecond, KeepAliveInterval: time.Hour}
	client, server := sessionPair(t, newSlowConn(a, 40*time.Millisecond), c, cfg)

	wg.Add(1)
	go func() { // owner: this test via wg; ends when the server session closes
		defer wg.Done()
		for {
			st, err := server.AcceptStream()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { // owner: this test via wg; io.Copy ends with the session
				defer wg.Done()
				io.Copy(io.Discard, st)
			}()
		}
	}()

	// Open the streams one by one (no congestion yet), then send on all
	// of them at once: 32 frames of two 40 ms writes each queue for
	// longer than the 300 ms write timeout.
	streams := make([]*yamux.Stream, 32)
	for i := range streams {
		st, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = st
	}
	start := make(chan struct{})
	errs := make(chan error, len(streams))
	for _, st := range streams {
		wg.Add(1)
		go func() { // owner: this test via wg; Send returns within the write timeout
			defer wg.Done()
			<-start
			errs <- NewCodec(st).Send(&Log{Seq: 1, Stream: StreamStdout, Data: make([]byte, MaxLogChunk)})
		}()
	}
	close(start)
	waitClosed(t, client.CloseChan(), testTimeout, "congested client session")
	var sawTimeout bool
	for range streams {
		select {
		case err := <-errs:
			sawTimeout = sawTimeout || errors.Is(err, ErrWriteTimeout)
		case <-time.After(testTimeout):
			t.Fatal("a Send did not return")
		}
	}
	if !sawTimeout {
		t.Error("no Send reported ErrWriteTimeout")
	}
}

// stallProxy forwards between a test's connection and a fresh TCP
// connection until stall is called; from then on it stops reading, like a
// middlebox that has lost its route: what is in flight is dropped, and the
// senders' socket buffers fill up.
type stallProxy struct {
	far     net.Conn // the end to give the other side
	conns   []net.Conn
	stalled chan struct{}
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func newStallProxy(t *testing.T, near net.Conn) *stallProxy {
	inner, far := tcpPair(t)
	p := &stallProxy{far: far, conns: []net.Conn{near, inner, far},
		stalled: make(chan struct{}), stop: make(chan struct{})}
	p.wg.Add(2)
	go p.pump(inner, near) // owner: p.close
	go p.pump(near, inner) // owner: p.close
	return p
}

func (p *stallProxy) pump(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		select {
		case <-p.stalled:
			<-p.stop
			return
		default:
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *stallProxy) stall() { p.once.Do(func() { close(p.stalled) }) }

func (p *stallProxy) close() {
	p.stall()
	close(p.stop)
	for _, c := range p.conns {
		c.Close()
	}
	p.wg.Wait()
}

// TestKeepAliveClosesSilentSession: when the path between the two sides
// stops carrying anything, both sessions close within about
// KeepAliveInterval + WriteTimeout.
func TestKeepAliveClosesSilentSession(t *testing.T) {
	a, c := tcpPair(t)
	p := newStallProxy(t, c)
	defer p.close()
	cfg := &SessionConfig{KeepAliveInterval: 100 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}
	client, server := sessionPair(t, a, p.far, cfg)

	// Healthy: several keep-alive rounds pass without closing.
	select {
	case <-client.CloseChan():
		t.Fatal("healthy session closed")
	case <-time.After(5 * cfg.KeepAliveInterval):
	}
	p.stall()
	start := time.Now()
	waitClosed(t, client.CloseChan(), testTimeout, "client session")
	waitClosed(t, server.CloseChan(), testTimeout, "server session")
	elapsed := time.Since(start)
	t.Logf("both sessions closed %s after the path stalled", elapsed)
	if limit := 3 * (cfg.KeepAliveInterval + cfg.WriteTimeout); elapsed > limit {
		t.Errorf("closed after %s, want about %s", elapsed, cfg.KeepAliveInterval+cfg.WriteTimeout)
	}
}

func TestSessionConfig(t *testing.T) {
	y, err := (*SessionConfig)(nil).YamuxConfig()
	if err != nil {
		t.Fatal(err)
	}
	if !y.EnableKeepAlive || y.KeepAliveInterval != DefaultKeepAliveInterval ||
		y.ConnectionWriteTimeout != DefaultWriteTimeout || y.MaxStreamWindowSize != DefaultMaxStreamWindow ||
		y.StreamOpenTimeout != DefaultStreamOpenTimeout || y.LogOutput != io.Discard {
		t.Errorf("defaults: %+v", y)
	}
	if _, err := (&SessionConfig{WriteTimeout: -1}).YamuxConfig(); err == nil {
		t.Error("negative write timeout accepted")
	}
	a, b := net.Pipe()
	defer b.Close()
	if _, err := Client(a, &SessionConfig{MaxStreamWindowSize: 1024}); err == nil {
		t.Error("tiny window accepted")
	}
	if _, err := a.Write([]byte{0}); err == nil {
		t.Error("conn not closed after a failed Client")
	}
}

func TestYamuxLogger(t *testing.T) {
	var buf bytes.Buffer
	l := yamuxLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Printf("[ERR] yamux: keepalive failed: %v", errors.New("i/o deadline reached"))
	l.Println("[WARN] yamux: frame for missing stream")
	l.Print("plain")
	out := buf.String()
	for _, want := range []string{
		`level=ERROR msg="keepalive failed: i/o deadline reached" component=yamux`,
		`level=WARN msg="frame for missing stream" component=yamux`,
		`level=INFO msg=plain component=yamux`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// recordConn records each Write it is given.
type recordConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordConn) Write(b []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(b))
	return len(b), nil
}
func (r *recordConn) SetWriteDeadline(time.Time) error { return nil }

// yamuxHeader is a yamux frame header of type typ announcing length.
func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	h[7] = 1 // stream 1
	h[8], h[9], h[10], h[11] = byte(length>>24), byte(length>>16), byte(length>>8), byte(length)
	return h
}

// TestTimeoutConnCoalesces: a small data frame's header goes out in one
// Write with its body; other frames, and a body that is not the one
// announced, are written as they come, in order.
func TestTimeoutConnCoalesces(t *testing.T) {
	big := bytes.Repeat([]byte{'b'}, coalesceMax+1)
	for _, tt := range []struct {
		name   string
		writes [][]byte
		want   [][]byte
	}{
		{"data frame", [][]byte{yamuxHeader(0, 3), []byte("abc")},
			[][]byte{append(yamuxHeader(0, 3), "abc"...)}},
		{"window update", [][]byte{yamuxHeader(1, 3), []byte("abc")},
			[][]byte{yamuxHeader(1, 3), []byte("abc")}},
		{"large body", [][]byte{yamuxHeader(0, uint32(len(big))), big},
			[][]byte{yamuxHeader(0, uint32(len(big))), big}},
		{"other body", [][]byte{yamuxHeader(0, 3), []byte("abcd")},
			[][]byte{yamuxHeader(0, 3), []byte("abcd")}},
		{"two frames", [][]byte{yamuxHeader(0, 1), []byte("a"), yamuxHeader(2, 0), yamuxHeader(0, 2), []byte("bc")},
			[][]byte{append(yamuxHeader(0, 1), 'a'), yamuxHeader(2, 0), append(yamuxHeader(0, 2), "bc"...)}},
	} {
		rc := &recordConn{}
		c := &timeoutConn{Conn: rc, timeout: time.Second}
		for _, w := range tt.writes {
			if n, err := c.Write(w); n != len(w) || err != nil {
				t.Fatalf("%s: Write of %d bytes: %d, %v", tt.name, len(w), n, err)
			}
		}
		if fmt.Sprint(rc.writes) != fmt.Sprint(tt.want) {
			t.Errorf("%s: wrote %v, want %v", tt.name, rc.writes, tt.want)
		}
	}
}
