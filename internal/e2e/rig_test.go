package e2e

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/internal/syncbuf"

	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

func testLogger(t testing.TB, name string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("side", name)
	}
	// Kept, and shown when the test fails.
	buf := &syncbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("side", name)
}

// fastSession finds dead peers in a second or two, for fault tests.
var fastSession = &wire.SessionConfig{KeepAliveInterval: 300 * time.Millisecond, WriteTimeout: time.Second}

// coord is a coordinator's agent side (listener, registry, log store) on
// loopback; restart stops and starts its listener on the same address.
type coord struct {
	t      testing.TB
	server *agents.Hub
	logs   *logs.Store
	exits  *exitCounter // the hub's view of logs: counts the exits recorded
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func startCoord(t testing.TB, p *wiretest.PKI, verify agents.NodeVerifier, addr string) *coord {
	t.Helper()
	c := &coord{t: t, logs: &logs.Store{Dir: t.TempDir()}}
	c.exits = &exitCounter{Store: c.logs, recorded: map[string]int{}}
	c.server = agents.New(agents.Config{TLS: p.ServerTLS(), Session: fastSession, Verify: verify, Logs: c.exits, Log: testLogger(t, "coordinator")})
	c.listen(addr)
	t.Cleanup(func() { c.stop(); c.logs.Close() })
	return c
}

func (c *coord) listen(addr string) {
	c.t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan error, 1)
	go func() { c.done <- c.server.Serve(ctx, ln) }()
}

func (c *coord) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			c.t.Errorf("agent server: %v", err)
		}
	case <-time.After(30 * time.Second):
		c.t.Errorf("agent server did not stop")
	}
	c.cancel = nil
}

// runningAgent is a real agent running in this test process.
type runningAgent struct {
	t      testing.TB
	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop ends the agent as a killed process would: its sessions drop, its
// containers run on.
func (r *runningAgent) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				r.t.Errorf("agent: %v", err)
			}
		case <-time.After(30 * time.Second):
			r.t.Errorf("agent did not stop")
		}
	})
}

// startAgent runs a real agent against the local engine, dialling addr
// (through dial when set); sessions, when set, receives each session id
// and "" when a session ends.
func startAgent(t testing.TB, p *wiretest.PKI, addr string, dial func(ctx context.Context, n, a string) (net.Conn, error), sessions chan<- string) *runningAgent {
	t.Helper()
	cli := dockertest.Client(t)
	a, err := agent.New(agent.Config{
		Coordinator: addr, TLS: p.MustAgentTLS(t, localNode(t, cli)), Docker: cli, Session: fastSession,
		Logger: testLogger(t, "agent"), MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		Dial: dial,
		OnSession: func(id string) {
			if sessions != nil {
				select {
				case sessions <- id:
				default:
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return run(t, a)
}

// run runs a until stop or the end of the test.
func run(t testing.TB, a *agent.Agent) *runningAgent {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{t: t, agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// localNode is this engine's swarm node id, after making sure swarm is on.
func localNode(t testing.TB, cli *client.Client) string {
	t.Helper()
	dockertest.Swarm(t, cli)
	info, err := cli.Info(dockertest.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info.Swarm.NodeID
}

func swarmVerifier(cli *client.Client, node string) *agents.SwarmVerifier {
	return &agents.SwarmVerifier{Docker: cli, LocalNodeID: node}
}

// waitAgent waits until an agent of node is bound.
func waitAgent(t testing.TB, c *coord, node string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := c.server.WaitAgent(ctx, node); err != nil {
		t.Fatal(err)
	}
}

// proxy is a TCP relay between agent and coordinator that a test can
// stall (stop carrying bytes, connections kept open) or cut.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	stall  bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.relay(in, out)
		go p.relay(out, in)
	}
}

func (p *proxy) relay(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			stalled := p.stall
			p.mu.Unlock()
			if stalled {
				// Swallow: the connection stays open but carries nothing,
				// like a dead NAT entry or a frozen peer.
				continue
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			dst.Close()
			if !errors.Is(err, io.EOF) {
				src.Close()
			}
			return
		}
	}
}

// setStall starts or stops swallowing bytes on all connections.
func (p *proxy) setStall(on bool) {
	p.mu.Lock()
	p.stall = on
	p.mu.Unlock()
}

// cut closes every relayed connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
