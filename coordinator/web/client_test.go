package web

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

func TestClient(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	e := newAPIEnv(t, build("b1", coordinator.Success, t0), build("b2", coordinator.Running, t0.Add(time.Second)))
	ctx := context.Background()
	c, err := NewClient(e.url+"/", adminToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Health(ctx); err != nil {
		t.Errorf("Health: %v", err)
	}
	bs, err := c.Builds(ctx, ListOptions{State: "running"})
	if err != nil || len(bs) != 1 || bs[0].ID != "b2" {
		t.Fatalf("Builds(running) = %+v, %v", bs, err)
	}
	b, err := c.Build(ctx, "b1")
	if err != nil || b.State != "success" || b.Owner != "acme" {
		t.Fatalf("Build(b1) = %+v, %v", b, err)
	}
	var log strings.Builder
	if err := c.Log(ctx, "b1", true, &log); err != nil || log.String() != "output of b1\n<b>not html</b>\n" {
		t.Errorf("Log(b1) = %q, %v", log.String(), err)
	}
	if err := c.Cancel(ctx, "b2"); err != nil {
		t.Errorf("Cancel(b2): %v", err)
	}
	if err := c.Cancel(ctx, "b1"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "success already") {
		t.Errorf("Cancel of a finished build: %v", err)
	}
	if _, err := c.Build(ctx, "nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no build") {
		t.Errorf("Build(nope): %v", err)
	}
	ag, err := c.Agents(ctx)
	if err != nil || len(ag) != 1 || ag[0].NodeID != "n1" {
		t.Errorf("Agents = %+v, %v", ag, err)
	}
	if _, err := c.Builds(ctx, ListOptions{Limit: -1, Before: "nope"}); err == nil || !strings.Contains(err.Error(), "no such build") {
		t.Errorf("a refused list: %v", err)
	}
}

func TestClientRevokeAllow(t *testing.T) {
	e := newAPIEnv(t)
	ctx := context.Background()
	c, err := NewClient(e.url, adminToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RevokeAgent(ctx, "n1"); err != nil {
		t.Fatalf("RevokeAgent: %v", err)
	}
	if was, err := c.AllowAgent(ctx, "n1"); err != nil || !was {
		t.Errorf("AllowAgent of a revoked node = %v, %v", was, err)
	}
	if was, err := c.AllowAgent(ctx, "n1"); err != nil || was {
		t.Errorf("AllowAgent of an allowed node = %v, %v", was, err)
	}
	var ae *Error
	if err := c.RevokeAgent(ctx, "no such/node"); !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(err.Error(), `node "no such/node"`) {
		t.Errorf("RevokeAgent of a malformed node: %v", err)
	}
	anonymous, _ := NewClient(e.url, "", nil)
	if err := anonymous.RevokeAgent(ctx, "n2"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("RevokeAgent without a token: %v", err)
	}
	if _, err := anonymous.AllowAgent(ctx, "n2"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("AllowAgent without a token: %v", err)
	}
	if calls := e.agents.called(); strings.Join(calls, ",") != "revoke n1,allow n1,allow n1" {
		t.Errorf("the hub was asked %q", calls)
	}
}

// The token goes as a bearer token; a refusal comes back as ErrUnauthorized
// with the server's message.
func TestClientToken(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"message":"token revoked"}`))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, "s3cret", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Health(context.Background()); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Health of a refusing server: %v", err)
	}
	_, err = c.Builds(context.Background(), ListOptions{})
	var ae *Error
	if !errors.Is(err, ErrUnauthorized) || !errors.As(err, &ae) || ae.Message != "token revoked" {
		t.Errorf("refused token: %v", err)
	}
	if len(got) != 2 || got[1] != "Bearer s3cret" {
		t.Errorf("Authorization sent: %q", got)
	}
}

func TestNewClientRefuses(t *testing.T) {
	for server, want := range map[string]string{
		"":                    "--server or FORGE_SERVER",
		"forge.example.com":   "http(s) URL",
		"ftp://forge.example": "http(s) URL",
		"https://":            "http(s) URL",
	} {
		if _, err := NewClient(server, "", nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewClient(%q): %v, want an error saying %q", server, err, want)
		}
	}
}
