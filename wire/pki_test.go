package wire

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func parseLeaf(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestNewCA(t *testing.T) {
	ca, err := NewCA("forge CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if !c.IsCA || !c.MaxPathLenZero || c.Subject.CommonName != "forge CA" || len(c.SubjectKeyId) == 0 {
		t.Errorf("CA certificate: %+v", c)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got < DefaultCAValidity || got > DefaultCAValidity+ClockSkew+time.Minute {
		t.Errorf("validity %s, want about %s", got, DefaultCAValidity)
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key PEM: %s", keyPEM)
	}
	loaded, err := LoadCA(ca.CertPEM(), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || !loaded.Key.Equal(ca.Key) {
		t.Error("LoadCA does not give back the CA")
	}

	other, _ := NewCA("other", time.Hour)
	otherKey, _ := other.KeyPEM()
	if _, err := LoadCA(ca.CertPEM(), otherKey); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	leafPEM, leafKey, _ := ca.Issue(IssueRequest{Role: RoleAgent, Name: "n1", Node: "n1"})
	if _, err := LoadCA(leafPEM, leafKey); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("leaf as CA: %v", err)
	}
	if _, err := LoadCA([]byte("junk"), keyPEM); err == nil {
		t.Error("junk certificate accepted")
	}
	if _, err := NewCA("", time.Hour); err == nil {
		t.Error("empty name accepted")
	}
}

func TestIssue(t *testing.T) {
	ca, _ := NewCA("forge CA", 0)
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Role: RoleCoordinator, Name: "coord",
		Hosts: []string{"forge.example.com", "10.0.0.5", "::1", " ", "coordinator"}})
	if err != nil {
		t.Fatal(err)
	}
	c := parseLeaf(t, certPEM)
	if c.Subject.CommonName != "coord" {
		t.Errorf("CN %q", c.Subject.CommonName)
	}
	if !slices.Equal(c.DNSNames, []string{"forge.example.com", "coordinator"}) {
		t.Errorf("DNS names %v", c.DNSNames)
	}
	if len(c.IPAddresses) != 2 || !c.IPAddresses[0].Equal(net.ParseIP("10.0.0.5")) || !c.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("IP addresses %v", c.IPAddresses)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://forge/coordinator" {
		t.Errorf("URIs %v", c.URIs)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("coordinator EKU %v", c.ExtKeyUsage)
	}
	if c.SerialNumber.BitLen() > 128 || c.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v", c.SerialNumber)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got < DefaultLeafValidity || got > DefaultLeafValidity+ClockSkew+time.Minute {
		t.Errorf("validity %s", got)
	}
	if time.Since(c.NotBefore) < ClockSkew-time.Minute {
		t.Errorf("NotBefore %s not back-dated", c.NotBefore)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "forge.example.com"}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if role, err := RoleOf(c); err != nil || role != RoleCoordinator {
		t.Errorf("RoleOf: %v, %v", role, err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key PEM type")
	}

	agentPEM, _, err := ca.Issue(IssueRequest{Role: RoleAgent, Name: "node-1", Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	a := parseLeaf(t, agentPEM)
	if !slices.Equal(a.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("agent EKU %v", a.ExtKeyUsage)
	}
	if role, err := RoleOf(a); err != nil || role != RoleAgent {
		t.Errorf("RoleOf: %v, %v", role, err)
	}
	if a.SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}
	if _, err := a.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify agent: %v", err)
	}

	// Explicit NotBefore, and the CA's end caps the leaf's.
	nb := time.Now().Add(-time.Hour).Truncate(time.Second)
	p, _, err := ca.Issue(IssueRequest{Role: RoleAgent, Name: "n", Node: "n", NotBefore: nb, ValidFor: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if l := parseLeaf(t, p); !l.NotBefore.Equal(nb) || !l.NotAfter.Equal(nb.Add(30*time.Minute)) {
		t.Errorf("validity %s..%s", l.NotBefore, l.NotAfter)
	}
	short, _ := NewCA("short", time.Hour)
	p, _, _ = short.Issue(IssueRequest{Role: RoleAgent, Name: "n", Node: "n"})
	if l := parseLeaf(t, p); l.NotAfter.After(short.Cert.NotAfter) {
		t.Errorf("leaf ends %s after its CA %s", l.NotAfter, short.Cert.NotAfter)
	}

	for _, req := range []IssueRequest{
		{Role: "admin", Name: "x"},
		{Role: RoleAgent},
		{Role: RoleAgent, Name: "x", ValidFor: -time.Second},
		{Role: RoleCoordinator, Name: "x"}, // no hosts
	} {
		if _, _, err := ca.Issue(req); err == nil {
			t.Errorf("%+v accepted", req)
		}
	}
}

func TestRoleOf(t *testing.T) {
	u := func(s string) *url.URL { v, _ := url.Parse(s); return v }
	tests := []struct {
		uris []*url.URL
		want Role
		err  error
	}{
		{[]*url.URL{u("spiffe://forge/agent")}, RoleAgent, nil},
		{[]*url.URL{u("https://example.com/x"), u("spiffe://forge/coordinator")}, RoleCoordinator, nil},
		{nil, "", ErrNoRole},
		{[]*url.URL{u("spiffe://other/agent")}, "", ErrNoRole},
		{[]*url.URL{u("spiffe://forge/admin")}, "", ErrNoRole},
		{[]*url.URL{u("spiffe://forge/agent"), u("spiffe://forge/coordinator")}, "", ErrNoRole},
	}
	for _, tt := range tests {
		got, err := RoleOf(&x509.Certificate{URIs: tt.uris})
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("%v: got %q, %v; want %q, %v", tt.uris, got, err, tt.want, tt.err)
		}
	}
	if _, err := RoleOf(nil); !errors.Is(err, ErrNoPeerCertificate) {
		t.Errorf("nil: %v", err)
	}
	if r, err := ParseRole("agent"); r != RoleAgent || err != nil {
		t.Errorf("ParseRole: %v, %v", r, err)
	}
	if _, err := ParseRole("root"); err == nil {
		t.Error("ParseRole accepted root")
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	ca, _ := NewCA("forge CA", time.Hour)
	certPEM, keyPEM, _ := ca.Issue(IssueRequest{Role: RoleAgent, Name: "n1", Node: "n1"})
	_, otherKey, _ := ca.Issue(IssueRequest{Role: RoleAgent, Name: "n2", Node: "n2"})
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certFile, keyFile := write("n1.pem", certPEM), write("n1-key.pem", keyPEM)
	otherKeyFile, junk := write("n2-key.pem", otherKey), write("junk.pem", []byte("not pem"))
	caFile := write("ca.pem", ca.CertPEM())
	missing := filepath.Join(dir, "missing.pem")

	pair, err := LoadKeyPair(certFile, keyFile)
	if err != nil || pair.Leaf == nil || pair.Leaf.Subject.CommonName != "n1" {
		t.Errorf("LoadKeyPair: %v", err)
	}
	for _, tt := range []struct{ cert, key, names string }{
		{missing, keyFile, missing},
		{certFile, missing, missing},
		{junk, keyFile, junk},
		{certFile, junk, junk},
		{certFile, otherKeyFile, otherKeyFile},
	} {
		if _, err := LoadKeyPair(tt.cert, tt.key); err == nil || !strings.Contains(err.Error(), tt.names) {
			t.Errorf("LoadKeyPair(%s, %s): %v, want an error naming %s", tt.cert, tt.key, err, tt.names)
		}
	}

	pool, err := LoadCAPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseLeaf(t, certPEM).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("verify with loaded pool: %v", err)
	}
	for _, f := range []string{missing, junk, keyFile} {
		if _, err := LoadCAPool(f); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("LoadCAPool(%s): %v, want an error naming it", f, err)
		}
	}
}
