package wire_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	. "github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// handshake runs a TLS handshake between tls.Server(serverCfg) and
// tls.Client(clientCfg) over TCP on loopback and returns each side's error.
// The server then writes one byte and the client reads it: in TLS 1.3 the
// client's handshake is over before the server has judged the client's
// certificate, so a refusal reaches the client on its first read.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	a, c := wiretest.MustTCPPair(t)
	sc, cc := tls.Server(c, serverCfg), tls.Client(a, clientCfg)
	defer sc.Close()
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	errs := runBoth(t, func() { a.Close(); c.Close() },
		func() error {
			if err := sc.HandshakeContext(ctx); err != nil {
				sc.Close()
				return err
			}
			if role, err := PeerRole(sc.ConnectionState()); err != nil || role != RoleAgent {
				t.Errorf("server sees role %q, %v", role, err)
			}
			_, err := sc.Write([]byte{1})
			return err
		},
		func() error {
			if err := cc.HandshakeContext(ctx); err != nil {
				cc.Close()
				return err
			}
			cc.SetReadDeadline(time.Now().Add(testTimeout))
			_, err := io.ReadFull(cc, make([]byte, 1))
			if err != nil {
				return err
			}
			if role, err := PeerRole(cc.ConnectionState()); err != nil || role != RoleCoordinator {
				t.Errorf("client sees role %q, %v", role, err)
			}
			return nil
		})
	return errs[0], errs[1]
}

func TestTLSAccepts(t *testing.T) {
	p := wiretest.MustPKI(t)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		serr, cerr := handshake(t, ServerConfig(p.Pool, p.Coordinator), ClientConfig(p.Pool, p.Agent, host))
		if serr != nil || cerr != nil {
			t.Errorf("%s: server %v, client %v", host, serr, cerr)
		}
	}
	cfg := ServerConfig(p.Pool, p.Coordinator)
	if cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("server config %+v", cfg)
	}
	if cfg := ClientConfig(p.Pool, p.Agent, "h"); cfg.MinVersion != tls.VersionTLS13 || cfg.ServerName != "h" || cfg.InsecureSkipVerify {
		t.Errorf("client config %+v", cfg)
	}
}

// TestTLSServerRefuses: who does not get in.
func TestTLSServerRefuses(t *testing.T) {
	p := wiretest.MustPKI(t)
	other := wiretest.MustPKI(t)
	tests := []struct {
		name   string
		client tls.Certificate
		want   string // in the server's error
	}{
		{"no client certificate", tls.Certificate{}, "didn't provide a certificate"},
		{"agent of another CA", other.Agent, "unknown authority"},
		{"coordinator certificate as client", p.Coordinator, "incompatible key usage"},
		{"coordinator role with client key usage",
			issueEKU(t, p, IssueRequest{Role: RoleCoordinator, Name: "rogue", Hosts: []string{"127.0.0.1"}},
				[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}),
			"peer certificate has role coordinator, want agent"},
		{"expired agent",
			p.MustIssue(t, IssueRequest{Role: RoleAgent, Name: "old", Node: "old", NotBefore: time.Now().Add(-2 * time.Hour), ValidFor: time.Hour}),
			"expired"},
		{"not yet valid agent",
			p.MustIssue(t, IssueRequest{Role: RoleAgent, Name: "early", Node: "early", NotBefore: time.Now().Add(time.Hour)}),
			"not yet valid"},
		{"agent without role", issueNoRole(t, p), "no forge role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := ClientConfig(p.Pool, tt.client, "127.0.0.1")
			if tt.client.Certificate == nil {
				cc.Certificates = nil
			}
			serr, cerr := handshake(t, ServerConfig(p.Pool, p.Coordinator), cc)
			if serr == nil || !strings.Contains(serr.Error(), tt.want) {
				t.Errorf("server: got %v, want an error containing %q", serr, tt.want)
			}
			if cerr == nil {
				t.Error("client: no error")
			}
			if tt.want == "no forge role" && !errors.Is(serr, ErrNoRole) {
				t.Errorf("server error %v is not ErrNoRole", serr)
			}
			if strings.HasPrefix(tt.want, "peer certificate has role") {
				var re *RoleError
				if !errors.As(serr, &re) || re.Got != RoleCoordinator || re.Want != RoleAgent {
					t.Errorf("server error %v is not a *RoleError", serr)
				}
			}
		})
	}
}

// issueNoRole issues an agent-usable certificate without a role URI.
func issueNoRole(t *testing.T, p *wiretest.PKI) tls.Certificate {
	t.Helper()
	tmpl := p.MustIssue(t, IssueRequest{Role: RoleAgent, Name: "anonymous", Node: "anonymous"})
	leaf := *tmpl.Leaf
	leaf.URIs = nil
	der, err := x509.CreateCertificate(rand.Reader, &leaf, p.CA.Cert, tmpl.Leaf.PublicKey, p.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: tmpl.PrivateKey}
}

// TestTLSClientRefuses: the coordinators an agent will not talk to.
func TestTLSClientRefuses(t *testing.T) {
	p := wiretest.MustPKI(t)
	other := wiretest.MustPKI(t)
	tests := []struct {
		name   string
		server tls.Certificate
		want   string // in the client's error
	}{
		{"coordinator of another CA", other.Coordinator, "unknown authority"},
		{"coordinator for another host",
			p.MustIssue(t, IssueRequest{Role: RoleCoordinator, Name: "elsewhere", Hosts: []string{"elsewhere.example", "10.9.9.9"}}),
			"not 127.0.0.1"},
		{"agent certificate as server", p.MustIssue(t, IssueRequest{Role: RoleAgent, Name: "n", Node: "n", Hosts: []string{"127.0.0.1"}}),
			"incompatible key usage"},
		{"agent role with server key usage",
			issueEKU(t, p, IssueRequest{Role: RoleAgent, Name: "rogue", Node: "rogue", Hosts: []string{"127.0.0.1"}},
				[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}),
			"peer certificate has role agent, want coordinator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serr, cerr := handshake(t, ServerConfig(p.Pool, tt.server), ClientConfig(p.Pool, p.Agent, "127.0.0.1"))
			if cerr == nil || !strings.Contains(cerr.Error(), tt.want) {
				t.Errorf("client: got %v, want an error containing %q", cerr, tt.want)
			}
			if serr == nil {
				t.Error("server: no error")
			}
			if strings.HasPrefix(tt.want, "peer certificate has role") {
				var re *RoleError
				if !errors.As(cerr, &re) || re.Got != RoleAgent || re.Want != RoleCoordinator {
					t.Errorf("client error %v is not a *RoleError", cerr)
				}
			}
		})
	}
}

// TestSessionOverTLS: Server reports a refused client as an error (the
// handshake runs inside it), and the client learns on its first stream.
func TestSessionOverTLS(t *testing.T) {
	p := wiretest.MustPKI(t)
	rogue := issueEKU(t, p, IssueRequest{Role: RoleCoordinator, Name: "rogue", Hosts: []string{"127.0.0.1"}},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	a, c := wiretest.MustTCPPair(t)
	ta := tls.Client(a, ClientConfig(p.Pool, rogue, "127.0.0.1"))
	tc := tls.Server(c, ServerConfig(p.Pool, p.Coordinator))
	errs := runBoth(t, func() { a.Close(); c.Close() },
		func() error {
			s, err := Client(ta, nil)
			if err != nil {
				return err
			}
			defer s.Close()
			st, err := s.Open(context.Background())
			if err != nil {
				return err
			}
			st.SetDeadline(time.Now().Add(testTimeout))
			_, err = NewCodec(st).Recv()
			return err
		},
		func() error {
			s, err := Server(tc, nil)
			if err == nil {
				s.Close()
			}
			return err
		})
	var re *RoleError
	if !errors.As(errs[1], &re) || !strings.Contains(errs[1].Error(), "TLS handshake") {
		t.Errorf("server: got %v, want a *RoleError from the handshake", errs[1])
	}
	if errs[0] == nil {
		t.Error("client: no error")
	}
}
