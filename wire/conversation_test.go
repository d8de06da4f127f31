package wire_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	. "github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// transports are the connections the codec and the conversation run over.
var transports = []struct {
	name string
	dial func(t *testing.T, p *wiretest.PKI) (agent, coordinator net.Conn)
}{
	{"pipe", func(t *testing.T, _ *wiretest.PKI) (net.Conn, net.Conn) {
		a, c := net.Pipe()
		t.Cleanup(func() { a.Close(); c.Close() })
		return a, c
	}},
	{"tcp", func(t *testing.T, _ *wiretest.PKI) (net.Conn, net.Conn) {
		return wiretest.MustTCPPair(t)
	}},
	{"tls", func(t *testing.T, p *wiretest.PKI) (net.Conn, net.Conn) {
		a, c := wiretest.MustTCPPair(t)
		ta := tls.Client(a, ClientConfig(p.Pool, p.Agent, "127.0.0.1"))
		tc := tls.Server(c, ServerConfig(p.Pool, p.Coordinator))
		t.Cleanup(func() { ta.Close(); tc.Close() })
		return ta, tc
	}},
}

// streamer gives a conversation its streams: yamux streams, or the one
// connection reused for each stream in turn.
type streamer interface {
	open() (io.ReadWriteCloser, error)
	accept() (io.ReadWriteCloser, error)
}

type single struct{ c net.Conn }

func (s single) open() (io.ReadWriteCloser, error)   { return s.stream() }
func (s single) accept() (io.ReadWriteCloser, error) { return s.stream() }
func (s single) stream() (io.ReadWriteCloser, error) {
	if err := s.c.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		return nil, err
	}
	return struct {
		io.ReadWriter
		io.Closer
	}{s.c, io.NopCloser(nil)}, nil
}

type muxed struct{ s *Session }

func (m muxed) open() (io.ReadWriteCloser, error) {
	st, err := m.s.Open(context.Background())
	if err != nil {
		return nil, err
	}
	return st, st.SetDeadline(time.Now().Add(testTimeout))
}

func (m muxed) accept() (io.ReadWriteCloser, error) {
	st, err := m.s.Accept(context.Background())
	if err != nil {
		return nil, err
	}
	return st, st.SetDeadline(time.Now().Add(testTimeout))
}

// fixture is what the coordinator sends and the agent should receive.
type fixture struct {
	exec, source   []byte
	execRef        BlobRef
	spec           json.RawMessage
	logs           []Log
	stdout, stderr []byte
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{
		exec:   make([]byte, 300_001), // more than yamux's initial 256 KiB window
		source: make([]byte, 2<<20+7),
		spec:   json.RawMessage(`{"build_id":"b-1","steps":["go test ./..."]}`),
	}
	rand.Read(f.exec)
	rand.Read(f.source)
	ref, err := BlobRefOf(bytes.NewReader(f.exec))
	if err != nil {
		t.Fatal(err)
	}
	f.execRef = ref
	big := bytes.Repeat([]byte("x"), MaxLogChunk)
	chunks := []struct {
		stream string
		data   []byte
	}{
		{StreamStdout, []byte("step 1: go vet ./...\n")},
		{StreamStderr, []byte("warning: something\n")},
		{StreamStdout, big},
		{StreamStdout, []byte("ok\n")},
	}
	var offsets = map[string]int64{}
	for i, c := range chunks {
		f.logs = append(f.logs, Log{Seq: uint64(i + 1), Stream: c.stream, Offset: offsets[c.stream], Data: c.data})
		offsets[c.stream] += int64(len(c.data))
		if c.stream == StreamStdout {
			f.stdout = append(f.stdout, c.data...)
		} else {
			f.stderr = append(f.stderr, c.data...)
		}
	}
	return f
}

// agentSide plays the agent: Hello/Welcome/Holding on the control stream,
// accepts a Launch with its blobs, then streams logs and the exit.
func agentSide(f *fixture, st streamer) error {
	ctl, err := st.open()
	if err != nil {
		return fmt.Errorf("open control stream: %w", err)
	}
	defer ctl.Close()
	c := NewCodec(ctl)
	if err := c.Send(&Hello{Protocol: ProtocolVersion, NodeID: "n1", Hostname: "node-1", AgentVersion: "v0.1.0", EngineVersion: "28.5.2"}); err != nil {
		return err
	}
	w, err := Expect[*Welcome](c)
	if err != nil {
		return err
	}
	if w.Protocol != ProtocolVersion || w.SessionID != "s-1" {
		return fmt.Errorf("welcome %+v", w)
	}
	if err := c.Send(Holding{}); err != nil {
		return err
	}

	ls, err := st.accept()
	if err != nil {
		return fmt.Errorf("accept launch stream: %w", err)
	}
	defer ls.Close()
	lc := NewCodec(ls)
	l, err := Expect[Launch](lc) // the struct form works too
	if err != nil {
		return err
	}
	if !bytes.Equal(l.Spec, f.spec) || l.Workdir != "/src" {
		return fmt.Errorf("launch %+v", l)
	}
	if err := lc.Send(LaunchReady{NeedExecutor: true}); err != nil {
		return err
	}
	var exec, src bytes.Buffer
	if err := RecvBlobVerified(ls, l.Executor, &exec); err != nil {
		return err
	}
	if err := lc.RecvBlob(&src, l.SourceSize); err != nil {
		return err
	}
	if !bytes.Equal(exec.Bytes(), f.exec) || !bytes.Equal(src.Bytes(), f.source) {
		return fmt.Errorf("blobs differ: executor %d bytes, source %d bytes", exec.Len(), src.Len())
	}
	if err := lc.Send(&Started{ContainerID: l.ContainerID, StartedAt: time.Now()}); err != nil {
		return err
	}

	gs, err := st.open()
	if err != nil {
		return fmt.Errorf("open log stream: %w", err)
	}
	defer gs.Close()
	gc := NewCodec(gs)
	if err := gc.Send(&Attach{BuildID: "b-1", ContainerID: l.ContainerID}); err != nil {
		return err
	}
	at, err := Expect[*Attached](gc)
	if err != nil {
		return err
	}
	if at.NextSeq != 1 || at.Done {
		return fmt.Errorf("attached %+v", at)
	}
	// Acknowledgements come back while we write: read them in their own
	// goroutine (on net.Pipe, where writes wait for the reader, a single
	// goroutine would deadlock).
	acked := make(chan error, 1)
	go func() { // owner: agentSide, which receives from acked before returning
		var last uint64
		for {
			m, err := gc.Recv()
			if err != nil {
				acked <- fmt.Errorf("read acks: %w", err)
				return
			}
			switch m := m.(type) {
			case *LogAck:
				last = m.Seq
			case *ExitAck:
				if last != uint64(len(f.logs)) {
					acked <- fmt.Errorf("exit acked with logs acked to %d", last)
					return
				}
				acked <- nil
				return
			default:
				acked <- fmt.Errorf("unexpected %s on log stream", m.MessageType())
				return
			}
		}
	}()
	for i := range f.logs {
		if err := gc.Send(&f.logs[i]); err != nil {
			return err
		}
	}
	if err := gc.Send(&Exit{ExitCode: 3, LastSeq: uint64(len(f.logs)), FinishedAt: time.Now()}); err != nil {
		return err
	}
	return <-acked
}

// coordinatorSide plays the coordinator.
func coordinatorSide(f *fixture, st streamer) error {
	ctl, err := st.accept()
	if err != nil {
		return fmt.Errorf("accept control stream: %w", err)
	}
	defer ctl.Close()
	c := NewCodec(ctl)
	h, err := Expect[*Hello](c)
	if err != nil {
		return err
	}
	if r := ProtocolRefusal(h.Protocol); r != nil {
		return c.Send(r)
	}
	if err := c.Send(&Welcome{Protocol: ProtocolVersion, CoordinatorVersion: "v0.1.0", SessionID: "s-1"}); err != nil {
		return err
	}
	if _, err := Expect[*Holding](c); err != nil {
		return err
	}

	ls, err := st.open()
	if err != nil {
		return fmt.Errorf("open launch stream: %w", err)
	}
	defer ls.Close()
	lc := NewCodec(ls)
	launch := &Launch{BuildID: "b-1", ContainerID: "c0ffee", Executor: f.execRef, Spec: f.spec,
		SourceSize: int64(len(f.source)), Workdir: "/src"}
	if err := lc.Send(launch); err != nil {
		return err
	}
	ready, err := Expect[*LaunchReady](lc)
	if err != nil {
		return err
	}
	if ready.NeedExecutor {
		if err := lc.SendBlob(bytes.NewReader(f.exec), f.execRef.Size); err != nil {
			return err
		}
	}
	if err := lc.SendBlob(bytes.NewReader(f.source), launch.SourceSize); err != nil {
		return err
	}
	if _, err := Expect[*Started](lc); err != nil {
		return err
	}

	gs, err := st.accept()
	if err != nil {
		return fmt.Errorf("accept log stream: %w", err)
	}
	defer gs.Close()
	gc := NewCodec(gs)
	if _, err := Expect[*Attach](gc); err != nil {
		return err
	}
	if err := gc.Send(&Attached{NextSeq: 1}); err != nil {
		return err
	}
	var stdout, stderr []byte
	next := uint64(1)
	for {
		m, err := gc.Recv()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *Log:
			if m.Seq != next {
				return fmt.Errorf("log seq %d, want %d", m.Seq, next)
			}
			next++
			if m.Stream == StreamStdout {
				stdout = append(stdout, m.Data...)
			} else {
				stderr = append(stderr, m.Data...)
			}
			if err := gc.Send(&LogAck{Seq: m.Seq}); err != nil {
				return err
			}
		case *Exit:
			if m.ExitCode != 3 || m.LastSeq != next-1 {
				return fmt.Errorf("exit %+v after seq %d", m, next-1)
			}
			if !bytes.Equal(stdout, f.stdout) || !bytes.Equal(stderr, f.stderr) {
				return fmt.Errorf("log differs")
			}
			return gc.Send(ExitAck{})
		default:
			return fmt.Errorf("unexpected %s on log stream", m.MessageType())
		}
	}
}

// TestConversation runs Hello/Welcome, a Launch with two blobs and a log
// stream over each transport, first with the conversation's streams one
// after another on the bare connection, then over a yamux session.
func TestConversation(t *testing.T) {
	p := wiretest.MustPKI(t)
	for _, tr := range transports {
		for _, mux := range []bool{false, true} {
			name := tr.name + "/bare"
			if mux {
				name = tr.name + "/yamux"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t)
				a, c := tr.dial(t, p)
				abort := func() { a.Close(); c.Close() }
				var as, cs streamer = single{a}, single{c}
				if mux {
					cfg := &SessionConfig{KeepAliveInterval: time.Second, WriteTimeout: 5 * time.Second}
					sa, sc := wiretest.MustSessions(t, a, c, cfg)
					as, cs = muxed{sa}, muxed{sc}
				}
				errs := runBoth(t, abort,
					func() error { return agentSide(f, as) },
					func() error { return coordinatorSide(f, cs) })
				for i, err := range errs {
					if err != nil {
						t.Errorf("side %d: %v", i, err)
					}
				}
			})
		}
	}
}

// TestCodecTransports sends every kind of message each way over each bare
// transport.
func TestCodecTransports(t *testing.T) {
	p := wiretest.MustPKI(t)
	msgs := SampleMessages()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			a, c := tr.dial(t, p)
			a.SetDeadline(time.Now().Add(testTimeout))
			c.SetDeadline(time.Now().Add(testTimeout))
			ca, cc := NewCodec(a), NewCodec(c)
			errs := runBoth(t, func() { a.Close(); c.Close() },
				func() error {
					for _, m := range msgs {
						if err := ca.Send(m); err != nil {
							return err
						}
					}
					for _, want := range msgs {
						got, err := ca.Recv()
						if err != nil {
							return err
						}
						if err := SameMessage(got, want); err != nil {
							return err
						}
					}
					return nil
				},
				func() error {
					for _, want := range msgs {
						got, err := cc.Recv()
						if err != nil {
							return err
						}
						if err := SameMessage(got, want); err != nil {
							return err
						}
					}
					for _, m := range msgs {
						if err := cc.Send(m); err != nil {
							return err
						}
					}
					return nil
				})
			for _, err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}
