package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/wire"
)

// TestAgentCommand starts the real `forge agent` with certificates made by
// `forge certs`, against a coordinator's agent listener on port 0, and
// waits for it to be bound to this node.
func TestAgentCommand(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.Swarm(t, cli)
	info, err := cli.Info(dockertest.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, args := range [][]string{
		{"certs", "init", "--dir", dir},
		{"certs", "issue", "--dir", dir, "--role", "coordinator", "--name", "coordinator", "--host", "localhost"},
		{"certs", "issue", "--dir", dir, "--role", "agent", "--name", "agent", "--node", info.Swarm.NodeID},
	} {
		if _, err := run(t, args...); err != nil {
			t.Fatal(err)
		}
	}
	pool, err := wire.LoadCAPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "coordinator.pem"), filepath.Join(dir, "coordinator-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv := agents.New(agents.Config{TLS: wire.ServerConfig(pool, pair), Logs: &logs.Store{Dir: t.TempDir()},
		Verify: &agents.SwarmVerifier{Docker: cli, LocalNodeID: info.Swarm.NodeID}, Log: slog.New(slog.DiscardHandler)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	_, port, _ := net.SplitHostPort(ln.Addr().String())
	actx, stop := context.WithCancel(context.Background())
	app := newApp()
	var out syncbuf.Buffer
	app.Writer, app.ErrWriter = &out, &out
	ran := make(chan error, 1)
	go func() {
		ran <- app.RunContext(actx, []string{"forge", "agent", "--coordinator", "localhost:" + port,
			"--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-cert", filepath.Join(dir, "agent.pem"), "--tls-key", filepath.Join(dir, "agent-key.pem")})
	}()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := srv.WaitAgent(wctx, info.Swarm.NodeID); err != nil {
		t.Fatalf("%v; agent said:\n%s", err, out.String())
	}
	stop()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("forge agent: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("forge agent did not stop on cancel")
	}
}

func TestAgentCommandRefusesTCPDocker(t *testing.T) {
	_, err := run(t, "agent", "--coordinator", "c:7443", "--tls-ca", "x", "--tls-cert", "y", "--tls-key", "z", "--docker-host", "tcp://10.0.0.1:2375")
	if err == nil || !strings.Contains(err.Error(), "--tls-ca") && !strings.Contains(err.Error(), "never Docker over TCP") {
		t.Fatalf("err %v", err)
	}
	if _, err := localDocker("tcp://10.0.0.1:2375"); err == nil || !strings.Contains(err.Error(), "never Docker over TCP") {
		t.Fatalf("localDocker(tcp): %v", err)
	}
}

// TestAgentIdentityFlags: the agent needs a way to a certificate, and each
// bad combination of flags is an error naming the flag, before anything
// is dialled. Good combinations reach the Docker check (here refused, a
// TCP host), so no engine is needed.
func TestAgentIdentityFlags(t *testing.T) {
	dir := t.TempDir()
	if _, err := run(t, "certs", "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	token, empty := write("join-token", "s3cret\n"), write("empty-token", "\n")
	kept := t.TempDir() // only whether it holds the file is checked here
	if err := os.WriteFile(filepath.Join(kept, agent.StateFile), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	base := []string{"agent", "--coordinator", "c:7443", "--docker-host", "tcp://10.0.0.1:2375"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no CA", []string{"--join-token-file", token}, "tls-ca"},
		{"nothing", []string{"--tls-ca", ca}, "needs a certificate"},
		{"cert without key", []string{"--tls-ca", ca, "--tls-cert", ca}, "--tls-cert needs --tls-key"},
		{"key without cert", []string{"--tls-ca", ca, "--tls-key", ca}, "--tls-key needs --tls-cert"},
		{"empty state dir", []string{"--tls-ca", ca, "--state-dir", t.TempDir()}, "--state-dir"},
		{"missing token file", []string{"--tls-ca", ca, "--join-token-file", filepath.Join(dir, "nope")}, "--join-token-file"},
		{"empty token file", []string{"--tls-ca", ca, "--join-token-file", empty}, "--join-token-file"},
		{"token", []string{"--tls-ca", ca, "--join-token-file", token}, "never Docker over TCP"},
		{"kept certificate", []string{"--tls-ca", ca, "--state-dir", kept}, "never Docker over TCP"},
	} {
		_, err := run(t, append(base, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
