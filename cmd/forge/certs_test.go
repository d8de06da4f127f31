package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/wire"
)

const node = "p8u3hq2v5r9x1ktbz0d7lm4ae"

func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if _, err := run(t, "certs", "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "certs", "issue", "--dir", dir, "--role", "coordinator", "--name", "coord", "--host", "coordinator,10.0.0.5", "--host", "localhost"); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "certs", "issue", "--dir", dir, "--role", "agent", "--node", node); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{
		"ca.pem": 0o644, "ca-key.pem": 0o600, "coord.pem": 0o644, "coord-key.pem": 0o600,
		"agent-" + node + ".pem": 0o644, "agent-" + node + "-key.pem": 0o600,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	pair, err := wire.LoadKeyPair(filepath.Join(dir, "coord.pem"), filepath.Join(dir, "coord-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if role, err := wire.RoleOf(pair.Leaf); err != nil || role != wire.RoleCoordinator {
		t.Errorf("coordinator role %v %v", role, err)
	}
	if got := strings.Join(pair.Leaf.DNSNames, ","); got != "coordinator,localhost" || len(pair.Leaf.IPAddresses) != 1 {
		t.Errorf("hosts %s %v", got, pair.Leaf.IPAddresses)
	}
	pool, err := wire.LoadCAPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pair.Leaf.Verify(x509Opts(pool)); err != nil {
		t.Errorf("coordinator certificate does not chain to the CA: %v", err)
	}

	agent, err := wire.LoadKeyPair(filepath.Join(dir, "agent-"+node+".pem"), filepath.Join(dir, "agent-"+node+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := wire.NodeOf(agent.Leaf); err != nil || got != node {
		t.Errorf("agent certificate's node %q, %v; want %s", got, err, node)
	}
	if len(agent.Leaf.URIs) != 1 || agent.Leaf.URIs[0].String() != "spiffe://forge/agent/"+node {
		t.Errorf("agent certificate's URIs %v", agent.Leaf.URIs)
	}
	if life := agent.Leaf.NotAfter.Sub(agent.Leaf.NotBefore); life != wire.DefaultLeafValidity+wire.ClockSkew {
		t.Errorf("agent certificate valid for %s by default, want %s", life-wire.ClockSkew, wire.DefaultLeafValidity)
	}
	if _, err := agent.Leaf.Verify(x509Opts(pool)); err != nil {
		t.Errorf("agent certificate does not chain to the CA: %v", err)
	}

	// Refusals, each leaving no file behind.
	before := files(t, dir)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"certs", "init", "--dir", dir}, "exists; use --force"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", node}, "exists; use --force"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "coordinator", "--name", "c2"}, "--host"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "admin", "--name", "x"}, "--role"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", node, "--name", "../x"}, "--name"},
		{[]string{"certs", "issue", "--dir", t.TempDir(), "--role", "agent", "--node", node}, "forge certs init"},
		{[]string{"certs", "issue", "--dir", dir, "--name", "a"}, `"role"`},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--name", "a"}, "--node is required"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", "node 1"}, `--node "node 1"`},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", "n/1"}, `--node "n/1"`},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", strings.Repeat("n", 65)}, "--node"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "coordinator", "--name", "c3", "--host", "c", "--node", node}, "--node: a coordinator certificate names no node"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", "n2", "--ttl", "0s"}, "--ttl 0s: want a positive duration"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", "n2", "--ttl", "-1h"}, "--ttl"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", "n2", "--ttl", "soon"}, "soon"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--node", "n2", "--ttl", "1.5d"}, "whole days"},
	} {
		_, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("forge %s: %v, want an error with %q", strings.Join(tc.args, " "), err, tc.want)
		}
		if after := files(t, dir); !slices.Equal(after, before) {
			t.Errorf("forge %s left files %v, had %v", strings.Join(tc.args, " "), after, before)
		}
	}
	if _, err := run(t, "certs", "issue", "--dir", dir, "--role", "agent", "--node", node, "--force"); err != nil {
		t.Errorf("--force: %v", err)
	}
}

// --ttl (or its old name --valid-for) sets the validity, in Go's forms or
// in days; a certificate never outlives its CA.
func TestCertsTTL(t *testing.T) {
	dir := t.TempDir()
	if _, err := run(t, "certs", "init", "--dir", dir, "--valid-for", "2400h"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flag, value string
		want        time.Duration
	}{
		{"--ttl", "36h", 36 * time.Hour},
		{"--ttl", "7d", 7 * 24 * time.Hour},
		{"--valid-for", "90m", 90 * time.Minute},
		{"--ttl", "365d", 0}, // capped: the CA ends first
	} {
		name := "a" + strings.TrimPrefix(tc.flag, "--") + tc.value
		out, err := run(t, "certs", "issue", "--dir", dir, "--role", "agent", "--node", "n1", "--name", name, tc.flag, tc.value)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.flag, tc.value, err)
		}
		if !strings.Contains(out, "role agent, node n1, valid until ") {
			t.Errorf("%s %s printed %q", tc.flag, tc.value, out)
		}
		pair, err := wire.LoadKeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		life := pair.Leaf.NotAfter.Sub(pair.Leaf.NotBefore) - wire.ClockSkew
		if tc.want == 0 {
			if time.Until(pair.Leaf.NotAfter) > 2400*time.Hour {
				t.Errorf("%s %s: valid until %v, after the CA", tc.flag, tc.value, pair.Leaf.NotAfter)
			}
			continue
		}
		if life != tc.want {
			t.Errorf("%s %s: valid for %s, want %s", tc.flag, tc.value, life, tc.want)
		}
	}
}

func TestCertsJoinToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := run(t, "certs", "join-token", "--dir", dir)
	file := filepath.Join(dir, "join-token")
	if err != nil || !strings.Contains(out, "wrote "+file) {
		t.Fatalf("join-token: %q, %v", out, err)
	}
	first, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^forge_join_[A-Za-z0-9_-]{43}$`).Match(first) {
		t.Errorf("join token %q: want forge_join_ and 256 bits in base64url", first)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("join token mode %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := run(t, "certs", "join-token", "--dir", dir); err == nil || !strings.Contains(err.Error(), "exists; use --force") {
		t.Errorf("a second join-token without --force: %v", err)
	}
	if again, _ := os.ReadFile(file); !bytes.Equal(again, first) {
		t.Error("a refused join-token changed the token")
	}
	if _, err := run(t, "certs", "join-token", "--dir", dir, "--force"); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(file); bytes.Equal(again, first) || len(again) != len(first) {
		t.Errorf("--force: %q after %q, want a new token", again, first)
	}
	if _, err := run(t, "certs", "join-token", "--dir", dir, "extra"); err == nil {
		t.Error("join-token took an argument")
	}
}

// files lists dir's file names.
func files(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func x509Opts(pool *x509.CertPool) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}
