package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/coordinator/web"
)

// hubFake is the agents hub as the API sees it: one connected agent, the
// revoked nodes, and the calls that reached it.
type hubFake struct {
	mu      sync.Mutex
	revoked map[string]bool
	calls   []string
}

func (h *hubFake) Agents() []agents.AgentInfo {
	return []agents.AgentInfo{{NodeID: "p8u3hq2v5r9x1ktbz0d7lm4ae", Hostname: "worker1", AgentVersion: "v1", EngineVersion: "28.0",
		Address: "10.0.0.7:40000", ConnectedSince: time.Now(), CertSerial: "0a1b", CertExpires: time.Date(2031, 2, 3, 4, 5, 6, 0, time.Local)}}
}

func (h *hubFake) Revoke(ctx context.Context, node string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, "revoke "+node)
	h.revoked[node] = true
	return nil
}

func (h *hubFake) Allow(ctx context.Context, node string) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, "allow "+node)
	was := h.revoked[node]
	delete(h.revoked, node)
	return was, nil
}

func (h *hubFake) called() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

type noBuilds struct{}

func (noBuilds) Submit(context.Context, coordinator.Request) (*coordinator.Build, error) {
	return nil, errors.New("no builds here")
}
func (noBuilds) Cancel(context.Context, string, string) error { return coordinator.ErrNotRunning }
func (noBuilds) CancelKey(context.Context, string, string)    {}
func (noBuilds) Approve(context.Context, string, string) (*coordinator.Build, error) {
	return nil, coordinator.ErrNotAwaiting
}
func (noBuilds) Wait(ctx context.Context, _ string) (*coordinator.Build, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

type noLogs struct{}

func (noLogs) Follow(context.Context, string, io.Writer, bool) error {
	return errors.New("no logs here")
}

// TestAgentsCommands runs forge agents, agents revoke and agents allow
// against the coordinator's real API (its hub faked), with the admin
// token from --admin-token-file, from FORGE_ADMIN_TOKEN_FILE, or as
// --token; refusals reach no hub.
func TestAgentsCommands(t *testing.T) {
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const adminToken = "forge_admin_0123456789abcdef0123"
	front, err := auth.New(auth.Config{Store: st, Key: bytes.Repeat([]byte{7}, 32), AdminToken: adminToken, Admins: []string{"dave"}})
	if err != nil {
		t.Fatal(err)
	}
	carolToken, _, err := front.NewToken(context.Background(), "carol", "cli")
	if err != nil {
		t.Fatal(err)
	}
	hub := &hubFake{revoked: map[string]bool{}}
	api, err := web.New(web.Config{Builds: noBuilds{}, Store: st, Logs: noLogs{}, Agents: hub, Auth: front})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const node = "p8u3hq2v5r9x1ktbz0d7lm4ae"
	server, withFile := []string{"--server", srv.URL}, []string{"--server", srv.URL, "--admin-token-file", tokenFile}

	for _, c := range []struct {
		args  []string
		want  []string // in the output, or in the error when fails is set
		fails bool
	}{
		// Refused before or by the server: the hub is not asked.
		{args: append([]string{"agents", "revoke"}, append(server, node)...), want: []string{"revoke node " + node, "need a Forge admin", "--admin-token-file"}, fails: true},
		{args: append([]string{"agents", "revoke", "--token", carolToken}, append(server, node)...), want: []string{"revoke node " + node, "admin"}, fails: true},
		{args: append([]string{"agents", "allow", "--token", carolToken}, append(server, node)...), want: []string{"allow node " + node}, fails: true},
		{args: append([]string{"agents", "revoke", "--token", "forge_pat_wrong"}, append(server, node)...), want: []string{"refused", "need a Forge admin"}, fails: true},
		{args: append([]string{"agents", "revoke"}, append(withFile, "bad.node")...), want: []string{`node "bad.node"`, "docker node ls"}, fails: true},
		{args: append([]string{"agents", "revoke"}, withFile...), want: []string{"one swarm node id"}, fails: true},
		{args: append([]string{"agents", "revoke"}, append(withFile, node, "other")...), want: []string{"one swarm node id"}, fails: true},
		{args: append([]string{"agents", "revoke", "--token", adminToken}, append(withFile, node)...), want: []string{"not both"}, fails: true},
		{args: append([]string{"agents", "revoke", "--admin-token-file", empty}, append(server, node)...), want: []string{"--admin-token-file " + empty + " is empty"}, fails: true},
		{args: append([]string{"agents", "revoke", "--admin-token-file", filepath.Join(dir, "nope")}, append(server, node)...), want: []string{"--admin-token-file", "no such file"}, fails: true},
		{args: append([]string{"agents"}, append(withFile, "bogus")...), want: []string{"list, revoke NODE or allow NODE"}, fails: true},
		{args: []string{"agents", "revoke", node}, want: []string{"--server"}, fails: true},

		// Done right.
		{args: append([]string{"agents"}, withFile...), want: []string{"NODE", "CERT EXPIRES", node, "worker1", "2031-02-03 04:05:06"}},
		{args: append([]string{"agents", "list"}, withFile...), want: []string{"CERT EXPIRES", node}},
		{args: append([]string{"agents", "revoke"}, append(withFile, node)...), want: []string{"revoked node " + node + ": its session is closed and its certificates refused"}},
		{args: append(append([]string{"agents"}, withFile...), "allow", node), want: []string{"allowed node " + node + ": it must join again with the join token"}},
		{args: append([]string{"agents", "allow", "--token", adminToken}, append(server, node)...), want: []string{"node " + node + " was not revoked"}},
	} {
		out, err := run(t, c.args...)
		text := out
		if c.fails {
			if err == nil {
				t.Errorf("forge %s succeeded:\n%s", strings.Join(c.args, " "), out)
				continue
			}
			text = err.Error()
		} else if err != nil {
			t.Errorf("forge %s: %v\n%s", strings.Join(c.args, " "), err, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(text, w) {
				t.Errorf("forge %s: %q lacks %q", strings.Join(c.args, " "), text, w)
			}
		}
		if c.fails && len(hub.called()) != 0 {
			t.Fatalf("forge %s failed, yet the hub was asked %q", strings.Join(c.args, " "), hub.called())
		}
	}
	if got := hub.called(); !slices.Equal(got, []string{"revoke " + node, "allow " + node, "allow " + node}) {
		t.Errorf("the hub was asked %q", got)
	}

	// The environment names the file and the server.
	t.Setenv("FORGE_ADMIN_TOKEN_FILE", tokenFile)
	t.Setenv("FORGE_SERVER", srv.URL)
	if out, err := run(t, "agents", "revoke", node); err != nil || !strings.Contains(out, "revoked node "+node) {
		t.Errorf("forge agents revoke with FORGE_ADMIN_TOKEN_FILE: %q, %v", out, err)
	}
	// A flag beats the environment, at either level.
	if _, err := run(t, "agents", "--server", "http://127.0.0.1:1", "allow", node); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("--server before the subcommand did not win over FORGE_SERVER: %v", err)
	}
	if _, err := run(t, "agents", "allow", "--server", "http://127.0.0.1:1", node); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("--server after the subcommand did not win over FORGE_SERVER: %v", err)
	}
	if got := hub.called(); len(got) != 4 {
		t.Errorf("the hub was asked %q", got)
	}
}

// approveBuilds approves, as the lifecycle does, only builds awaiting
// approval.
type approveBuilds struct {
	noBuilds
	st *store.Store
}

func (a approveBuilds) Approve(ctx context.Context, id, who string) (*coordinator.Build, error) {
	return a.st.UpdateBuild(ctx, id, func(x *coordinator.Build) error {
		if !x.AwaitingApproval() {
			return coordinator.ErrNotAwaiting
		}
		x.ApprovedBy, x.Approved = who, time.Now()
		return nil
	})
}

// TestApproveCommand: forge approve ID lets a build awaiting approval run;
// again, it says why not.
func TestApproveCommand(t *testing.T) {
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	b := &coordinator.Build{ID: "20260101T000000-abcdef", State: coordinator.Queued, Reason: coordinator.ReasonAwaitingApproval,
		Created: time.Now(), Subject: coordinator.Subject{Owner: "octo", Repo: "hello", PullRequest: 3, SHA: strings.Repeat("a", 40),
			Untrusted: true, NeedsApproval: true}}
	if err := st.CreateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	const adminToken = "forge_admin_0123456789abcdef0123"
	front, err := auth.New(auth.Config{Store: st, Key: bytes.Repeat([]byte{7}, 32), AdminToken: adminToken})
	if err != nil {
		t.Fatal(err)
	}
	api, err := web.New(web.Config{Builds: approveBuilds{st: st}, Store: st, Logs: noLogs{}, Agents: &hubFake{}, Auth: front})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	if _, err := run(t, "approve", "--server", srv.URL, b.ID); err == nil || !strings.Contains(err.Error(), "approve "+b.ID) {
		t.Errorf("approve without a token: %v", err)
	}
	out, err := run(t, "approve", "--server", srv.URL, "--token", adminToken, b.ID)
	if err != nil || !strings.Contains(out, "approved "+b.ID+" (octo/hello at "+b.SHA+") by ") {
		t.Errorf("approve: %q %v", out, err)
	}
	_, err = run(t, "approve", "--server", srv.URL, "--token", adminToken, b.ID)
	if err == nil || !strings.Contains(err.Error(), "is not awaiting approval") || !strings.Contains(err.Error(), "approved it already") {
		t.Errorf("approve twice: %v", err)
	}
	tlsArgs := []string{"--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem"}
	if _, err := run(t, append([]string{"coordinator", "--require-approval", "forksies"}, tlsArgs...)...); err == nil || !strings.Contains(err.Error(), `--require-approval "forksies": want forks, all or none`) {
		t.Errorf("coordinator --require-approval forksies: %v", err)
	}
	if _, err := run(t, append([]string{"coordinator", "--max-builds", "-1"}, tlsArgs...)...); err == nil || !strings.Contains(err.Error(), "--max-builds -1") {
		t.Errorf("coordinator --max-builds -1: %v", err)
	}
}
