package wire

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is one yamux session with the peer, made by Client or Server.
// It applies PROTOCOL.md §3's rule itself (see the top of session.go), so
// no caller can forget it: a failed Open or Accept, and a stream operation
// that fails with yamux's ErrConnectionWriteTimeout, close the whole
// session. Its methods are safe for concurrent use.
type Session struct {
	ys   *yamux.Session
	peer *x509.Certificate
}

// Open opens a stream to the peer. ctx bounds the open, and the stream
// lives at most as long as ctx: ctx's deadline is the stream's first
// deadline, and when ctx ends the stream's reads and writes fail with a
// time-out. SetDeadline may shorten that, not extend it past ctx's end.
// An open that fails other than by ctx's end closes the session.
func (s *Session) Open(ctx context.Context) (*Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("wire: open stream: %w", ctxErr(ctx))
	}
	ys, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	st := &Stream{ys: ys}
	if d, ok := ctx.Deadline(); ok {
		ys.SetDeadline(d)
	}
	if ctx.Done() != nil {
		st.stop = context.AfterFunc(ctx, st.cut)
	}
	return st, nil
}

// open runs yamux's OpenStream, which takes at most StreamOpenTimeout (a
// full backlog of unanswered opens) plus WriteTimeout, within ctx.
func (s *Session) open(ctx context.Context) (*yamux.Stream, error) {
	if ctx.Done() == nil {
		ys, err := s.ys.OpenStream()
		if err != nil {
			return nil, s.fail("open stream", err)
		}
		return ys, nil
	}
	type opened struct {
		ys  *yamux.Stream
		err error
	}
	result := make(chan opened) // unbuffered: Open takes the stream, or gave up
	gaveUp := make(chan struct{})
	go func() { // owner: Open; once it gives up, bounded by OpenStream's own limits
		ys, err := s.ys.OpenStream()
		select {
		case result <- opened{ys, err}:
		case <-gaveUp:
			if err != nil {
				s.fail("open stream", err)
			} else {
				ys.Close()
			}
		}
	}()
	select {
	case o := <-result:
		if o.err != nil {
			return nil, s.fail("open stream", o.err)
		}
		return o.ys, nil
	case <-ctx.Done():
		close(gaveUp)
		return nil, fmt.Errorf("wire: open stream: %w", ctxErr(ctx))
	}
}

// Accept waits until ctx ends for the next stream the peer opens. The
// stream has no deadline: the caller sets one (PROTOCOL.md §4.4). A
// failure other than ctx's end closes the session.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	ys, err := s.ys.AcceptStreamWithContext(ctx)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
			return nil, fmt.Errorf("wire: accept stream: %w", ctxErr(ctx))
		}
		return nil, s.fail("accept stream", err)
	}
	return &Stream{ys: ys}, nil
}

// Close closes the session, its streams and its connection.
func (s *Session) Close() error { return s.ys.Close() }

// Done is closed when the session has ended, for whatever reason.
func (s *Session) Done() <-chan struct{} { return s.ys.CloseChan() }

// RemoteAddr is the peer's address: the connection's remote address.
func (s *Session) RemoteAddr() net.Addr { return s.ys.RemoteAddr() }

// Peer is the leaf certificate the peer presented in the TLS handshake,
// verified by the connection's tls.Config (ServerConfig or ClientConfig
// check its role too; RoleOf reads it). Nil when the connection is not
// TLS or the peer presented none.
func (s *Session) Peer() *x509.Certificate { return s.peer }

// ctxErr is ctx's error, and its cause when that is another error.
func ctxErr(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause == nil || cause == err {
		return err
	}
	return fmt.Errorf("%w: %w", err, cause)
}

// fail closes the session after op failed with err, and says why.
func (s *Session) fail(op string, err error) error {
	s.ys.Close()
	if errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		return fmt.Errorf("wire: %s: %w: %w", op, ErrWriteTimeout, err)
	}
	return fmt.Errorf("wire: %s: %w: %w", op, ErrSessionClosed, err)
}

// check closes the stream's session when err is yamux's
// ErrConnectionWriteTimeout (after it a stream's bytes are in an unknown
// state) and returns err wrapped with ErrWriteTimeout; other errors come
// back unchanged.
func check(ys *yamux.Stream, err error) error {
	if err == nil || !errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		return err
	}
	ys.Session().Close()
	return fmt.Errorf("%w: %w", ErrWriteTimeout, err)
}

// Stream is one stream of a Session: an ordered, flow-controlled byte
// stream in each direction, the carrier of one conversation (PROTOCOL.md
// §4.3). Read and Write may run at the same time; a write time-out closes
// the session.
type Stream struct {
	ys *yamux.Stream

	mu    sync.Mutex
	ended bool        // the context of Open has ended: no deadline in the future
	stop  func() bool // releases the context of Open; nil when none
}

// longAgo is the deadline of a stream whose context has ended.
var longAgo = time.Unix(1, 0)

// cut runs when the context of Open ends.
func (st *Stream) cut() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.ended = true
	st.ys.SetDeadline(longAgo)
}

// Read reads from the stream; io.EOF when the peer closed its side.
func (st *Stream) Read(p []byte) (int, error) {
	n, err := st.ys.Read(p)
	return n, check(st.ys, err)
}

// Write writes all of p unless an error occurs.
func (st *Stream) Write(p []byte) (int, error) {
	n, err := st.ys.Write(p)
	return n, check(st.ys, err)
}

// Close closes the stream for writing (the peer reads io.EOF) and releases
// the context of Open. Reads go on until the peer closes its side; a peer
// that never does is reset after StreamCloseTimeout.
func (st *Stream) Close() error {
	if st.stop != nil {
		st.stop()
	}
	return st.ys.Close()
}

// SetDeadline sets the read and write deadlines; the zero time removes
// them (the context of Open still ends the stream).
func (st *Stream) SetDeadline(t time.Time) error { return st.set(st.ys.SetDeadline, t) }

// SetReadDeadline sets the read deadline, as SetDeadline.
func (st *Stream) SetReadDeadline(t time.Time) error { return st.set(st.ys.SetReadDeadline, t) }

// SetWriteDeadline sets the write deadline, as SetDeadline.
func (st *Stream) SetWriteDeadline(t time.Time) error { return st.set(st.ys.SetWriteDeadline, t) }

func (st *Stream) set(f func(time.Time) error, t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ended {
		t = longAgo
	}
	return f(t)
}
