package wire_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	. "github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

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
	if st, err := s.Open(context.Background()); err == nil { // its SYN cannot be written
		// yamux may report the open before the SYN is out; a write then
		// fails within the write timeout.
		NewCodec(st).Send(&LogAck{Seq: 1})
	}
	waitClosed(t, s.Done(), testTimeout, "session after write timeout")
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("closed after %s", elapsed)
	}
	// The session's end is reported with the cause.
	if _, err := s.Accept(context.Background()); !errors.Is(err, ErrWriteTimeout) && !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Errorf("AcceptStream after close: %v", err)
	}
}

// TestWriteTimeoutOverStalledTCP: over TCP the kernel buffers hide a
// stalled peer for a while; once they are full the write deadline fires
// and the session closes.
func TestWriteTimeoutOverStalledTCP(t *testing.T) {
	var wg sync.WaitGroup
	defer wg.Wait() // deferred first, so it runs after the sessions are closed
	a, c := wiretest.MustTCPPair(t)
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
		st, err := client.Open(context.Background())
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
	waitClosed(t, client.Done(), testTimeout, "client session over stalled TCP")
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
	a, c := wiretest.MustTCPPair(t)
	cfg := &SessionConfig{WriteTimeout: 300 * time.Millisecond, KeepAliveInterval: time.Hour}
	client, server := wiretest.MustSessions(t, newSlowConn(a, 40*time.Millisecond), c, cfg)

	wg.Add(1)
	go func() { // owner: this test via wg; ends when the server session closes
		defer wg.Done()
		for {
			st, err := server.Accept(context.Background())
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
	streams := make([]*Stream, 32)
	for i := range streams {
		st, err := client.Open(context.Background())
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
	waitClosed(t, client.Done(), testTimeout, "congested client session")
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
	inner, far := wiretest.MustTCPPair(t)
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
	a, c := wiretest.MustTCPPair(t)
	p := newStallProxy(t, c)
	defer p.close()
	cfg := &SessionConfig{KeepAliveInterval: 100 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}
	client, server := wiretest.MustSessions(t, a, p.far, cfg)

	// Healthy: several keep-alive rounds pass without closing.
	select {
	case <-client.Done():
		t.Fatal("healthy session closed")
	case <-time.After(5 * cfg.KeepAliveInterval):
	}
	p.stall()
	start := time.Now()
	waitClosed(t, client.Done(), testTimeout, "client session")
	waitClosed(t, server.Done(), testTimeout, "server session")
	elapsed := time.Since(start)
	t.Logf("both sessions closed %s after the path stalled", elapsed)
	if limit := 3 * (cfg.KeepAliveInterval + cfg.WriteTimeout); elapsed > limit {
		t.Errorf("closed after %s, want about %s", elapsed, cfg.KeepAliveInterval+cfg.WriteTimeout)
	}
}

// isTimeout says whether err is a deadline's time-out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// acceptAll accepts the coordinator side's streams until its session
// ends, and passes them on.
func acceptAll(t *testing.T, s *Session) <-chan *Stream {
	out := make(chan *Stream, 16)
	done := make(chan struct{})
	go func() { // owner: the test; ends when the session closes (waited for in Cleanup)
		defer close(done)
		for {
			st, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			out <- st
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return out
}

// TestStreamLivesWithinOpenContext: the context of Open is the stream's
// deadline, its end cuts a read that waits, and no later SetDeadline
// brings the stream back. A context's end is not a session failure.
func TestStreamLivesWithinOpenContext(t *testing.T) {
	agent, coord := wiretest.MustPipePair(t, nil)
	acceptAll(t, coord)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	st, err := agent.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	if _, err := st.Read(make([]byte, 1)); !isTimeout(err) {
		t.Errorf("read past the context's deadline: %v, want a time-out", err)
	}
	if elapsed := time.Since(start); elapsed > testTimeout/2 {
		t.Errorf("read returned after %s", elapsed)
	}

	ctx, cancel = context.WithCancel(context.Background())
	st, err = agent.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	read := make(chan error, 1)
	go func() { // owner: this test, which receives from read
		_, err := st.Read(make([]byte, 1))
		read <- err
	}()
	cancel()
	select {
	case err := <-read:
		if !isTimeout(err) {
			t.Errorf("read after cancel: %v, want a time-out", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("cancel did not end the read")
	}
	if err := st.SetDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Read(make([]byte, 1)); !isTimeout(err) {
		t.Errorf("read after a later SetDeadline: %v, want a time-out", err)
	}

	if _, err := agent.Open(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("open with an ended context: %v", err)
	}
	cctx, ccancel := context.WithCancelCause(context.Background())
	why := errors.New("build cancelled")
	ccancel(why)
	if _, err := agent.Open(cctx); !errors.Is(err, context.Canceled) || !errors.Is(err, why) {
		t.Errorf("open with a context cancelled for a cause: %v, want both", err)
	}
	stillOpen(t, agent, "an ended context")
	if st, err := agent.Open(context.Background()); err != nil {
		t.Errorf("open after: %v", err)
	} else {
		st.Close()
	}
}

// TestOpenWithinContext: an open the peer does not take in (its SYN
// cannot be written) returns when the context ends, and the session lives
// on until its own limits end it.
func TestOpenWithinContext(t *testing.T) {
	a, b := net.Pipe() // nobody ever reads b
	defer b.Close()
	s, err := Client(a, &SessionConfig{WriteTimeout: time.Hour, KeepAliveInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close() // ends the open left behind
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Open(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open: %v, want the context's deadline", err)
	}
	stillOpen(t, s, "the context's end")
}

// stillOpen fails the test when what closed s.
func stillOpen(t *testing.T, s *Session, what string) {
	t.Helper()
	select {
	case <-s.Done():
		t.Fatalf("%s closed the session", what)
	default:
	}
}

// TestAcceptWithinContext: Accept returns when its context ends and the
// session goes on; Accept and Open fail on a closed session with
// ErrSessionClosed.
func TestAcceptWithinContext(t *testing.T) {
	agent, coord := wiretest.MustPipePair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := coord.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("accept: %v, want the context's deadline", err)
	}
	opened := make(chan error, 1)
	go func() { // owner: this test, which receives from opened
		st, err := agent.Open(context.Background())
		if err == nil {
			_, err = st.Write([]byte{1})
			st.Close()
		}
		opened <- err
	}()
	ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := coord.Accept(ctx)
	if err != nil {
		t.Fatalf("accept after a time-out: %v", err)
	}
	st.SetDeadline(time.Now().Add(testTimeout))
	if b, err := io.ReadAll(st); err != nil || len(b) != 1 {
		t.Errorf("read %v, %v", b, err)
	}
	st.Close()
	if err := <-opened; err != nil {
		t.Error(err)
	}

	coord.Close()
	if _, err := coord.Accept(context.Background()); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("accept on a closed session: %v", err)
	}
	if _, err := coord.Open(context.Background()); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("open on a closed session: %v", err)
	}
}

// TestSessionPeer: over TLS each side knows the other's verified
// certificate and address; over a bare connection there is no
// certificate.
func TestSessionPeer(t *testing.T) {
	p := wiretest.MustPKI(t)
	agent, coord := p.MustPair(t, nil)
	for _, tt := range []struct {
		s    *Session
		want Role
	}{{agent, RoleCoordinator}, {coord, RoleAgent}} {
		if role, err := RoleOf(tt.s.Peer()); err != nil || role != tt.want {
			t.Errorf("peer role %q, %v; want %s", role, err, tt.want)
		}
		if addr, ok := tt.s.RemoteAddr().(*net.TCPAddr); !ok || !addr.IP.IsLoopback() {
			t.Errorf("remote address %v", tt.s.RemoteAddr())
		}
	}
	bare, _ := wiretest.MustPipePair(t, nil)
	if bare.Peer() != nil {
		t.Errorf("peer over a pipe: %v", bare.Peer().Subject)
	}
}
