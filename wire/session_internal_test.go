package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// TestStreamWriteTimeoutClosesSession: when a stream operation itself
// returns ErrConnectionWriteTimeout, the stream closes the session.
func TestStreamWriteTimeoutClosesSession(t *testing.T) {
	a, c := net.Pipe()
	client, err := Client(a, nil) // no TLS: nothing to wait for
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go func() { // owner: the session; Accept fails when it closes
		for {
			if _, err := server.Accept(context.Background()); err != nil {
				return
			}
		}
	}()
	st, err := client.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	err = check(st.ys, fmt.Errorf("send log: %w", yamux.ErrConnectionWriteTimeout))
	if !errors.Is(err, ErrWriteTimeout) || !errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		t.Errorf("got %v", err)
	}
	select {
	case <-client.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client session: not closed")
	}
	if err := check(st.ys, io.EOF); err != io.EOF {
		t.Errorf("other errors pass unchanged, got %v", err)
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
