package wire

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// What yamux v0.1.2 does about write time-outs, and what this file adds.
//
// yamux has one session goroutine (sendLoop) that writes every frame of
// every stream to the connection. A Stream.Write (and the window updates
// that Stream.Read sends, and the FIN of Stream.Close) hands a frame to that
// goroutine through a 64-slot channel and waits at most
// ConnectionWriteTimeout for it to be written (Session.waitForSendErr).
//
//   - When that wait times out, the stream call returns
//     ErrConnectionWriteTimeout and nothing else happens: the session stays
//     open and the stream's state is unchanged (hashicorp/yamux#142,
//     GHSA-29qp-crvh-w22m, still present in v0.1.2; the fix proposed in
//     hashicorp/yamux#143 is not in a release). Worse, the frame is either
//     dropped (the wait timed out before it was queued) or still queued and
//     written later (it timed out after), so the writer does not know what
//     the peer will receive; the peer's Read may wait forever for bytes that
//     were never sent, or receive bytes the writer believes failed. The
//     stream's framing is gone: only closing the session is safe. A Read
//     that returns ErrConnectionWriteTimeout means its window update was
//     lost, so the peer's writer stalls forever: same cure.
//   - yamux never sets a deadline on the connection. If the peer (or a
//     middlebox) stops reading, sendLoop blocks in conn.Write forever. Only
//     the keep-alive rescues that: its ping cannot be written within
//     ConnectionWriteTimeout, and keepalive() then closes the session. With
//     keep-alives off the session is half-dead for good; with them on it
//     takes up to KeepAliveInterval + ConnectionWriteTimeout, during which
//     every stream write times out as above.
//   - A failed conn.Write does close the session (sendLoop returns the
//     error, exitErr closes the session and the connection).
//   - A peer that stops answering pings is detected by keepalive(): Ping
//     waits ConnectionWriteTimeout for the answer and then closes the
//     session with ErrKeepAliveTimeout, within KeepAliveInterval +
//     ConnectionWriteTimeout of the last answered ping.
//
// So this package, to keep PROTOCOL.md §3's rule (a write time-out closes
// the whole session),
//
//  1. wraps the connection given to yamux in a timeoutConn, whose Write sets
//     a write deadline of WriteTimeout for every 64 KiB it writes. A
//     stalled peer then fails sendLoop's write within WriteTimeout and yamux
//     closes the session itself, keep-alive or not. The deadline is per
//     64 KiB rather than per Write because one yamux data frame can be a
//     whole window (1 MiB): the rule is "no progress for WriteTimeout", not
//     "1 MiB within 10 s".
//  2. closes the session when a stream call returns
//     ErrConnectionWriteTimeout, and when opening or accepting a stream
//     fails: Session and Stream (mux.go) do this inside, so callers hold
//     no yamux type and cannot forget it.
//  3. turns keep-alives on with a shorter interval (DefaultKeepAliveInterval).
//
// What remains: a stream Close whose FIN times out is not reported by yamux
// (Stream.Close always returns nil). Every request stream carries a
// deadline (PROTOCOL.md §4.4), which bounds the peer's wait.

// SessionConfig tunes a session. Zero fields take the defaults in const.go;
// a nil *SessionConfig means all defaults. Both sides use the same values
// (PROTOCOL.md §3).
type SessionConfig struct {
	// KeepAliveInterval is how often each side pings the other
	// (DefaultKeepAliveInterval). Keep-alives cannot be turned off.
	KeepAliveInterval time.Duration
	// WriteTimeout is yamux's ConnectionWriteTimeout and the write
	// deadline for each 64 KiB written to the connection
	// (DefaultWriteTimeout). Exceeding it closes the whole session.
	WriteTimeout time.Duration
	// StreamOpenTimeout: a stream the peer does not accept within this
	// time closes the session (DefaultStreamOpenTimeout).
	StreamOpenTimeout time.Duration
	// StreamCloseTimeout: a stream closed here but not by the peer is
	// reset after this time (DefaultStreamCloseTimeout).
	StreamCloseTimeout time.Duration
	// MaxStreamWindowSize is the per-stream receive window
	// (DefaultMaxStreamWindow for the server, DefaultClientStreamWindow
	// for the client; at least 256 KiB).
	MaxStreamWindowSize uint32
	// AcceptBacklog is how many streams the peer may open before this side
	// accepts them (DefaultAcceptBacklog).
	AcceptBacklog int
	// HandshakeTimeout bounds the TLS handshake when conn is a *tls.Conn
	// (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// Logger receives yamux's own log lines ([ERR] as Error, [WARN] as
	// Warn) with component=yamux. Nil discards them.
	Logger *slog.Logger
}

func (c *SessionConfig) withDefaults() (SessionConfig, error) {
	var out SessionConfig
	if c != nil {
		out = *c
	}
	for name, d := range map[string]time.Duration{
		"KeepAliveInterval":  out.KeepAliveInterval,
		"WriteTimeout":       out.WriteTimeout,
		"StreamOpenTimeout":  out.StreamOpenTimeout,
		"StreamCloseTimeout": out.StreamCloseTimeout,
		"HandshakeTimeout":   out.HandshakeTimeout,
	} {
		if d < 0 {
			return out, fmt.Errorf("wire: session config: negative %s %s", name, d)
		}
	}
	if out.AcceptBacklog < 0 {
		return out, fmt.Errorf("wire: session config: negative AcceptBacklog %d", out.AcceptBacklog)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&out.KeepAliveInterval, DefaultKeepAliveInterval)
	def(&out.WriteTimeout, DefaultWriteTimeout)
	def(&out.StreamOpenTimeout, DefaultStreamOpenTimeout)
	def(&out.StreamCloseTimeout, DefaultStreamCloseTimeout)
	def(&out.HandshakeTimeout, DefaultHandshakeTimeout)
	if out.MaxStreamWindowSize == 0 {
		out.MaxStreamWindowSize = DefaultMaxStreamWindow
	}
	if out.AcceptBacklog == 0 {
		out.AcceptBacklog = DefaultAcceptBacklog
	}
	return out, nil
}

// YamuxConfig returns the yamux configuration Client and Server use for c.
func (c *SessionConfig) YamuxConfig() (*yamux.Config, error) {
	cfg, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	return cfg.yamuxConfig(), nil
}

func (c SessionConfig) yamuxConfig() *yamux.Config {
	y := &yamux.Config{
		AcceptBacklog:          c.AcceptBacklog,
		EnableKeepAlive:        true,
		KeepAliveInterval:      c.KeepAliveInterval,
		ConnectionWriteTimeout: c.WriteTimeout,
		MaxStreamWindowSize:    c.MaxStreamWindowSize,
		StreamOpenTimeout:      c.StreamOpenTimeout,
		StreamCloseTimeout:     c.StreamCloseTimeout,
	}
	if c.Logger != nil {
		y.Logger = yamuxLogger{c.Logger}
	} else {
		y.LogOutput = io.Discard
	}
	return y
}

// Client starts the agent's side of a session over conn (the agent is the
// yamux client). When conn is a *tls.Conn the handshake is done first,
// within HandshakeTimeout, so certificate and role errors come back from
// here, except the server's refusal of this side's certificate, which TLS
// 1.3 reports on the first stream operation (PROTOCOL.md §2). On error conn
// is closed.
func Client(conn net.Conn, cfg *SessionConfig) (*Session, error) {
	return newSession(conn, cfg, true)
}

// Server starts the coordinator's side of a session over conn. Like
// Client, it completes a TLS handshake first; on error conn is closed.
func Server(conn net.Conn, cfg *SessionConfig) (*Session, error) {
	return newSession(conn, cfg, false)
}

func newSession(conn net.Conn, cfg *SessionConfig, client bool) (*Session, error) {
	side := "server"
	if client {
		side = "client"
	}
	c, err := cfg.withDefaults()
	if err != nil {
		conn.Close()
		return nil, err
	}
	if client && (cfg == nil || cfg.MaxStreamWindowSize == 0) {
		c.MaxStreamWindowSize = DefaultClientStreamWindow
	}
	var peer *x509.Certificate
	if tc, ok := conn.(*tls.Conn); ok {
		ctx, cancel := context.WithTimeout(context.Background(), c.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("wire: %s: TLS handshake with %s: %w", side, conn.RemoteAddr(), err)
		}
		peer, _ = PeerCertificate(tc.ConnectionState())
	}
	tconn := &timeoutConn{Conn: conn, timeout: c.WriteTimeout}
	start := yamux.Server
	if client {
		start = yamux.Client
	}
	s, err := start(tconn, c.yamuxConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("wire: %s: start yamux session: %w", side, err)
	}
	return &Session{ys: s, peer: peer}, nil
}

// timeoutConn is the connection yamux writes to: every 64 KiB written must
// get through within timeout, or the write fails. yamux's send loop then
// ends the session with that error (Session.exitErr records it as the
// cause, which AcceptStream returns) and closes the connection. It is not
// closed here first: that would wake yamux's reader, which could then
// record "use of closed connection" as the cause instead.
//
// It also writes the 12-byte header of a small yamux data frame together
// with the frame's body. yamux's send loop writes a frame's header and its
// body in two Writes, so two TLS records and two system calls, and each
// message on a stream is a data frame: 2 of the coordinator's 8 writes
// per Launch, 3 of an agent's 10 (docs/benchmarks.md). The send loop is
// the only writer of the connection and writes the body right after its
// header, from the same goroutine, so the header can wait for it.
type timeoutConn struct {
	net.Conn
	timeout time.Duration

	// held is a data frame's header that waits for its body (heldLen
	// bytes); only yamux's send loop touches these.
	held    [yamuxHeaderSize]byte
	heldLen int
}

// yamux's frame header (hashicorp/yamux const.go): version, type, flags,
// stream id, length; a data frame (type 0) is followed by length bytes.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// coalesceMax is the largest body written together with its header: one
// TLS record's worth. Larger bodies (bulk transfers) go out on their own,
// so they are not copied once more for the sake of 12 bytes.
const coalesceMax = 16 << 10

// coalesceBufs holds the buffers a header and its body are joined in; a
// pool rather than a buffer per connection, which a thousand idle agents
// would each keep.
var coalesceBufs = sync.Pool{New: func() any { b := make([]byte, 0, yamuxHeaderSize+coalesceMax); return &b }}

func (c *timeoutConn) Write(b []byte) (int, error) {
	if c.heldLen > 0 {
		want := c.heldLen
		c.heldLen = 0
		if len(b) == want {
			bp := coalesceBufs.Get().(*[]byte)
			buf := append(append((*bp)[:0], c.held[:]...), b...)
			n, err := c.write(buf)
			*bp = buf[:0]
			coalesceBufs.Put(bp)
			return max(n-yamuxHeaderSize, 0), err
		}
		// Not the body announced (a yamux that writes differently):
		// the header goes first, on its own, and framing is kept.
		if _, err := c.write(c.held[:]); err != nil {
			return 0, err
		}
	}
	if len(b) == yamuxHeaderSize && b[0] == 0 && b[1] == yamuxTypeData {
		if n := int(binary.BigEndian.Uint32(b[8:12])); n > 0 && n <= coalesceMax {
			copy(c.held[:], b)
			c.heldLen = n
			return len(b), nil
		}
	}
	return c.write(b)
}

// write writes b with a write deadline for every writeChunk bytes.
func (c *timeoutConn) write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		end := min(len(b), written+writeChunk)
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
			return written, fmt.Errorf("wire: set write deadline: %w", err)
		}
		n, err := c.Conn.Write(b[written:end])
		written += n
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return written, fmt.Errorf("%w: no progress writing to %s for %s: %w",
					ErrWriteTimeout, c.Conn.RemoteAddr(), c.timeout, err)
			}
			return written, err
		}
	}
	return written, nil
}

// yamuxLogger adapts slog to yamux.Logger. yamux prefixes its lines with
// "[ERR] yamux: " or "[WARN] yamux: ".
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any)                 { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.log(fmt.Sprintf(format, v...)) }
func (y yamuxLogger) Println(v ...any)               { y.log(fmt.Sprintln(v...)) }

func (y yamuxLogger) log(msg string) {
	msg = strings.TrimSpace(msg)
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[ERR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[DEBUG]": slog.LevelDebug} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			level, msg = l, strings.TrimSpace(rest)
			break
		}
	}
	msg = strings.TrimPrefix(msg, "yamux: ")
	y.l.Log(context.Background(), level, msg, "component", "yamux")
}
