package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forge-ci/forge/wire"
)

func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if _, err := run(t, "certs", "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "certs", "issue", "--dir", dir, "--role", "coordinator", "--name", "coord", "--host", "coordinator,10.0.0.5", "--host", "localhost"); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "certs", "issue", "--dir", dir, "--role", "agent", "--name", "agent"); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{
		"ca.pem": 0o644, "ca-key.pem": 0o600, "coord.pem": 0o644, "coord-key.pem": 0o600, "agent.pem": 0o644, "agent-key.pem": 0o600,
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

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"certs", "init", "--dir", dir}, "exists; use --force"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--name", "agent"}, "exists; use --force"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "coordinator", "--name", "c2"}, "--host"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "admin", "--name", "x"}, "--role"},
		{[]string{"certs", "issue", "--dir", dir, "--role", "agent", "--name", "../x"}, "--name"},
		{[]string{"certs", "issue", "--dir", t.TempDir(), "--role", "agent", "--name", "a"}, "forge certs init"},
		{[]string{"certs", "issue", "--dir", dir, "--name", "a"}, `"role"`},
	} {
		_, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("forge %s: %v, want an error with %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if _, err := run(t, "certs", "issue", "--dir", dir, "--role", "agent", "--name", "agent", "--force"); err != nil {
		t.Errorf("--force: %v", err)
	}
}

func x509Opts(pool *x509.CertPool) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}
