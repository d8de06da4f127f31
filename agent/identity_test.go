package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// The identity tests run the agent (Run) against testCoord, which signs
// with its test CA for agents that join with its token and renew
// (PROTOCOL.md §6.6, §6.7): real TLS, real yamux.

// tokenSource is a JoinToken whose token the test changes, counting calls.
type tokenSource struct {
	mu    sync.Mutex
	token string
	err   error
	calls int
}

func (s *tokenSource) set(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

func (s *tokenSource) get() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.token, s.err
}

func (s *tokenSource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// joining sets cfg up to join with tokens and keep its certificate in dir.
func joining(tokens *tokenSource, dir string) func(*Config) {
	return func(cfg *Config) { cfg.JoinToken, cfg.StateDir = tokens.get, dir }
}

// kept reads the certificate the agent keeps in dir, and checks that it
// is private and that its key is the certificate's.
func kept(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	path := filepath.Join(dir, StateFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("state dir: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(data, data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pair.Leaf
}

// writeKept puts a certificate and key in dir as the agent keeps them.
func writeKept(t *testing.T, dir string, certPEM, keyPEM []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, StateFile), append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issuedCerts returns a copy of what c has signed.
func (c *testCoord) issuedCerts() []issuedCert {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]issuedCert(nil), c.issued...)
}

func (c *testCoord) setToken(token string) { c.set(func() { c.token = token }) }

// set changes c's settings under its lock: its goroutines read them.
func (c *testCoord) set(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

func (c *testCoord) counts() (joins, renews, conns int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.joins, c.renews, c.conns
}

// waitLog waits until the agent has logged what n times.
func (r *agentRun) waitLog(t *testing.T, what string, n int) {
	t.Helper()
	deadline := time.Now().Add(wiretest.Timeout)
	for strings.Count(r.log.String(), what) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged %d times within %s:\n%s", what, n, wiretest.Timeout, r.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sameCert(a, b *x509.Certificate) bool { return a != nil && b != nil && a.Equal(b) }

// TestJoin: an agent without a certificate joins with the token, gets a
// certificate for its own node for a key it made, keeps it in its state
// directory, and connects presenting it.
func TestJoin(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	c.setToken("s3cret")
	tokens := &tokenSource{token: "s3cret"}
	dir := t.TempDir()
	r := runAgentWith(t, c, node.Docker(), joining(tokens, dir))
	cs := c.next(t)
	r.next(t)

	issued := c.issuedCerts()
	if len(issued) != 1 || issued[0].how != "join" {
		t.Fatalf("issued %+v, want one certificate, by join", issued)
	}
	if !sameCert(cs.peer, issued[0].cert) {
		t.Errorf("the session presents serial %x, want the joined one %x", cs.peer.SerialNumber, issued[0].cert.SerialNumber)
	}
	if len(cs.peer.URIs) != 1 || cs.peer.URIs[0].String() != wire.AgentURI("n1").String() {
		t.Errorf("the session's certificate has URIs %v, want %s", cs.peer.URIs, wire.AgentURI("n1"))
	}
	if got := kept(t, dir); !sameCert(got, issued[0].cert) {
		t.Errorf("the state directory keeps serial %x, want %x", got.SerialNumber, issued[0].cert.SerialNumber)
	}
	if n := tokens.count(); n != 1 {
		t.Errorf("the token was read %d times, want once", n)
	}
	if strings.Contains(r.log.String(), "s3cret") {
		t.Error("the agent logged the join token")
	}
}

// TestJoinRefused: a join with a wrong token is refused; the agent logs the
// coordinator's reason as an error, keeps nothing, and tries again after
// a back-off, reading the token again, so a corrected token file lets it
// in.
func TestJoinRefused(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	c.setToken("right")
	tokens := &tokenSource{token: "wrong"}
	dir := t.TempDir()
	r := runAgentWith(t, c, node.Docker(), joining(tokens, dir))

	c.wait(t, "three refused joins", func() bool { return c.joins >= 3 })
	if issued := c.issuedCerts(); len(issued) != 0 {
		t.Fatalf("issued %d certificates for a wrong token", len(issued))
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("state directory after refusals: %v, %v; want empty", entries, err)
	}
	logged := r.log.String()
	if !strings.Contains(logged, "level=ERROR") || !strings.Contains(logged, "wrong join token") || !strings.Contains(logged, "code=identity") {
		t.Errorf("the refusal is not logged as an error with its code and message:\n%s", logged)
	}
	c.set(func() {
		if c.n != 0 {
			t.Errorf("%d sessions with a certificate before any was issued", c.n)
		}
	})

	tokens.set("right")
	cs := c.next(t)
	r.next(t)
	if issued := c.issuedCerts(); len(issued) != 1 || !sameCert(cs.peer, issued[0].cert) {
		t.Errorf("after the token was corrected: issued %d, session presents %x", len(issued), cs.peer.SerialNumber)
	}
}

func (c *testCoord) joinsNow() int {
	joins, _, _ := c.counts()
	return joins
}

// TestJoinTokenUnreadable: a token that cannot be read is retried without
// dialling the coordinator.
func TestJoinTokenUnreadable(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	c.setToken("right")
	tokens := &tokenSource{err: errors.New("open /run/secrets/join-token: no such file")}
	runAgentWith(t, c, node.Docker(), joining(tokens, ""))
	deadline := time.Now().Add(wiretest.Timeout)
	for tokens.count() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := tokens.count(); n < 3 {
		t.Fatalf("the token was read %d times, want retries", n)
	}
	if _, _, conns := c.counts(); conns != 0 {
		t.Errorf("%d connections without a token", conns)
	}
}

// TestRestartWithStateDir: an agent restarted with its state directory
// connects with the certificate it kept, without reading the token.
func TestRestartWithStateDir(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	c.setToken("s3cret")
	dir := t.TempDir()
	first := runAgentWith(t, c, node.Docker(), joining(&tokenSource{token: "s3cret"}, dir))
	c.next(t)
	first.next(t)
	first.stop()
	joined := c.issuedCerts()[0].cert

	tokens := &tokenSource{err: errors.New("the token must not be needed")}
	r := runAgentWith(t, c, node.Docker(), joining(tokens, dir))
	cs := c.next(t)
	r.next(t)
	if !sameCert(cs.peer, joined) {
		t.Errorf("after the restart the session presents %x, want the kept %x", cs.peer.SerialNumber, joined.SerialNumber)
	}
	if n := tokens.count(); n != 0 {
		t.Errorf("the token was read %d times after the restart", n)
	}
	if joins := c.joinsNow(); joins != 1 {
		t.Errorf("%d joins, want 1", joins)
	}
}

// TestStateDirNotUsable: a kept certificate that has expired, names
// another node, or is not a certificate at all is not used: the agent
// joins and replaces it.
func TestStateDirNotUsable(t *testing.T) {
	for name, kept0 := range map[string]func(p *wiretest.PKI) ([]byte, []byte, error){
		"expired": func(p *wiretest.PKI) ([]byte, []byte, error) {
			return p.CA.Issue(wire.IssueRequest{Role: wire.RoleAgent, Name: "n1", Node: "n1", NotBefore: time.Now().Add(-2 * time.Hour), ValidFor: time.Hour})
		},
		"other node": func(p *wiretest.PKI) ([]byte, []byte, error) {
			return p.CA.Issue(wire.IssueRequest{Role: wire.RoleAgent, Name: "n2", Node: "n2"})
		},
		"garbage": func(p *wiretest.PKI) ([]byte, []byte, error) {
			return []byte("not a certificate\n"), nil, nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			node := fakedocker.NewNode("n1")
			c := startCoord(t)
			c.setToken("s3cret")
			dir := t.TempDir()
			certPEM, keyPEM, err := kept0(c.pki)
			if err != nil {
				t.Fatal(err)
			}
			writeKept(t, dir, certPEM, keyPEM)
			r := runAgentWith(t, c, node.Docker(), joining(&tokenSource{token: "s3cret"}, dir))
			cs := c.next(t)
			r.next(t)
			issued := c.issuedCerts()
			if len(issued) != 1 || !sameCert(cs.peer, issued[0].cert) {
				t.Fatalf("issued %d; the session presents %x, want the joined certificate", len(issued), cs.peer.SerialNumber)
			}
			if got := kept(t, dir); !sameCert(got, issued[0].cert) {
				t.Errorf("the state directory keeps %x, want the joined %x", got.SerialNumber, issued[0].cert.SerialNumber)
			}
			if !strings.Contains(r.log.String(), "kept certificate not used") {
				t.Errorf("the unusable certificate is not logged:\n%s", r.log.String())
			}
		})
	}
}

// TestNoUsableCertificate: without a join token, an agent whose only
// certificates are unusable stops with ErrNoCertificate, saying what to
// give it, and never dials.
func TestNoUsableCertificate(t *testing.T) {
	p := wiretest.MustPKI(t)
	otherNode := p.MustAgentTLS(t, "n2")
	expiredPEM, expiredKey, err := p.CA.Issue(wire.IssueRequest{Role: wire.RoleAgent, Name: "n1", Node: "n1", NotBefore: time.Now().Add(-2 * time.Hour), ValidFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(t *testing.T, cfg *Config){
		"empty state dir": func(t *testing.T, cfg *Config) { cfg.StateDir = t.TempDir() },
		"expired in state dir": func(t *testing.T, cfg *Config) {
			cfg.StateDir = t.TempDir()
			writeKept(t, cfg.StateDir, expiredPEM, expiredKey)
		},
		"given for another node": func(t *testing.T, cfg *Config) { cfg.TLS = otherNode },
	} {
		t.Run(name, func(t *testing.T) {
			var dials atomic.Int32
			cfg := Config{Coordinator: "127.0.0.1:1", TLS: wire.JoinConfig(p.Pool, wiretest.ServerName),
				Docker: fakedocker.NewNode("n1").Docker(), MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
				Dial: func(context.Context, string, string) (net.Conn, error) {
					dials.Add(1)
					return nil, errors.New("no dialling")
				}}
			edit(t, &cfg)
			ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
			defer cancel()
			err := Run(ctx, cfg)
			if !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), "join token") {
				t.Errorf("Run: %v, want ErrNoCertificate naming the remedies", err)
			}
			if n := dials.Load(); n != 0 {
				t.Errorf("%d dials", n)
			}
		})
	}
	if _, err := New(Config{Coordinator: "c:1", TLS: wire.JoinConfig(p.Pool, wiretest.ServerName), Docker: fakedocker.NewNode("n1").Docker()}); err == nil {
		t.Error("New accepted no certificate, no join token and no state directory")
	}
}

// TestGivenCertificate: a certificate given in TLS for this node is used
// as it is; the state directory's, when valid, comes first.
func TestGivenCertificate(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	given := c.pki.MustAgentTLS(t, "n1")
	r := runAgentWith(t, c, node.Docker(), func(cfg *Config) { cfg.TLS = given })
	cs := c.next(t)
	r.next(t)
	if !sameCert(cs.peer, given.Certificates[0].Leaf) {
		t.Errorf("the session presents %x, want the given certificate", cs.peer.SerialNumber)
	}
	r.stop()

	dir := t.TempDir()
	certPEM, keyPEM, err := c.pki.CA.Issue(wire.IssueRequest{Role: wire.RoleAgent, Name: "n1", Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	writeKept(t, dir, certPEM, keyPEM)
	want, _ := wire.ParseCertPEM(certPEM)
	r = runAgentWith(t, c, node.Docker(), func(cfg *Config) { cfg.TLS, cfg.StateDir = given, dir })
	cs = c.next(t)
	r.next(t)
	if !sameCert(cs.peer, want) {
		t.Errorf("the session presents %x, want the kept %x", cs.peer.SerialNumber, want.SerialNumber)
	}
}

// TestHelloRefusedIdentity: a Hello refused with code identity (the node
// was revoked, then allowed again) makes an agent with a join token drop
// its certificate and join again; one without a token keeps its
// certificate and tries again with it.
func TestHelloRefusedIdentity(t *testing.T) {
	refuseFirst := func(n int) *wire.Refused {
		if n == 1 {
			return wire.NewRefused(wire.RefusedIdentity, "certificate issued before the node's revocation")
		}
		return nil
	}
	t.Run("with token", func(t *testing.T) {
		node := fakedocker.NewNode("n1")
		c := startCoord(t)
		c.setToken("s3cret")
		c.set(func() { c.onHello = refuseFirst })
		given := c.pki.MustAgentTLS(t, "n1")
		r := runAgentWith(t, c, node.Docker(), func(cfg *Config) {
			cfg.TLS, cfg.JoinToken = given, (&tokenSource{token: "s3cret"}).get
		})
		cs := c.next(t)
		r.next(t)
		issued := c.issuedCerts()
		if len(issued) != 1 || !sameCert(cs.peer, issued[0].cert) {
			t.Errorf("issued %d; the session presents %x, want a joined certificate", len(issued), cs.peer.SerialNumber)
		}
		if !strings.Contains(r.log.String(), "before the node's revocation") {
			t.Errorf("the refusal is not logged:\n%s", r.log.String())
		}
	})
	t.Run("without token", func(t *testing.T) {
		node := fakedocker.NewNode("n1")
		c := startCoord(t)
		c.set(func() { c.onHello = refuseFirst })
		given := c.pki.MustAgentTLS(t, "n1")
		r := runAgentWith(t, c, node.Docker(), func(cfg *Config) { cfg.TLS = given })
		cs := c.next(t)
		r.next(t)
		if !sameCert(cs.peer, given.Certificates[0].Leaf) || c.joinsNow() != 0 {
			t.Errorf("the session presents %x after %d joins, want the given certificate and none", cs.peer.SerialNumber, c.joinsNow())
		}
	})
}

// TestRenew: the agent renews its certificate on its live session at two
// thirds of its life, for a new key each time, keeps each in its state
// directory, and the session goes on; its next connection presents the
// renewed certificate.
func TestRenew(t *testing.T) {
	const ttl = 3 * time.Second
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	c.setToken("s3cret")
	c.set(func() { c.ttl = ttl })
	dir := t.TempDir()
	r := runAgentWith(t, c, node.Docker(), joining(&tokenSource{token: "s3cret"}, dir))
	cs := c.next(t)
	r.next(t)

	// Signed is not yet kept: wait for the agent's word.
	r.waitLog(t, "certificate renewed", 2)
	issued := c.issuedCerts()
	keys := map[string]bool{}
	for i, is := range issued[:3] {
		if want := map[bool]string{true: "join", false: "renew"}[i == 0]; is.how != want {
			t.Errorf("certificate %d issued by %s, want %s", i, is.how, want)
		}
		if i > 0 {
			if is.session != cs.id {
				t.Errorf("renewal %d on session %q, want %q", i, is.session, cs.id)
			}
			// Due at two thirds of the life left when the last came
			// (X.509 times are whole seconds: less than ttl).
			prev := issued[i-1]
			if gap, want := is.at.Sub(prev.at), time.Duration(wire.RenewAt*float64(prev.cert.NotAfter.Sub(prev.at))); gap < want-300*time.Millisecond || gap > want+time.Second {
				t.Errorf("renewal %d came %v after the certificate before it, want about %v", i, gap, want)
			}
			if is.cert.SerialNumber.Cmp(issued[i-1].cert.SerialNumber) == 0 {
				t.Errorf("renewal %d has the serial of the one before", i)
			}
		}
		der, err := x509.MarshalPKIXPublicKey(is.cert.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		keys[string(der)] = true
	}
	if len(keys) != 3 {
		t.Errorf("%d keys for 3 certificates, want a new key each time", len(keys))
	}
	select {
	case id := <-r.ids:
		t.Fatalf("OnSession(%q) while renewing: the session changed", id)
	default:
	}

	// A renewal may be under way when the session ends: take what the
	// agent kept, which must be a renewal at least as new as the second.
	cs.ws.Close()
	r.next(t)
	cs2 := c.next(t)
	r.next(t)
	issued = c.issuedCerts()
	found := -1
	for i, is := range issued {
		if sameCert(cs2.peer, is.cert) {
			found = i
		}
	}
	if found < 2 {
		t.Errorf("the next connection presents certificate %d of those issued, want the second renewal or a later one", found)
	}
	if got := kept(t, dir); found >= 0 && !sameCert(got, issued[found].cert) {
		t.Errorf("the state directory keeps %x, want the certificate presented, %x", got.SerialNumber, cs2.peer.SerialNumber)
	}
}

// TestRenewRefused: a refused renewal is retried with back-off on the same
// session, which lives on; a forbidden one is logged as an error.
func TestRenewRefused(t *testing.T) {
	node := fakedocker.NewNode("n1")
	c := startCoord(t)
	c.setToken("s3cret")
	c.set(func() {
		c.ttl = 3 * time.Second
		c.onRenew = func(n int) *wire.Refused {
			switch n {
			case 1:
				return wire.NewRefused(wire.RefusedForbidden, "node n1 has left swarm")
			case 2:
				return wire.NewRefused(wire.RefusedInternal, "disk full")
			}
			return nil
		}
	})
	dir := t.TempDir()
	r := runAgentWith(t, c, node.Docker(), joining(&tokenSource{token: "s3cret"}, dir))
	cs := c.next(t)
	r.next(t)

	c.wait(t, "a renewal after two refusals", func() bool { return len(c.issued) >= 2 })
	issued := c.issuedCerts()
	if _, renews, _ := c.counts(); renews < 3 || issued[1].how != "renew" || issued[1].session != cs.id {
		t.Errorf("%d renew requests, certificate 1 by %s on %q; want the third renewal to succeed on session %s", renews, issued[1].how, issued[1].session, cs.id)
	}
	due := time.Duration(wire.RenewAt * float64(issued[0].cert.NotAfter.Sub(issued[0].at)))
	if gap := issued[1].at.Sub(issued[0].at); gap < due+2*renewBackoffMin/2-300*time.Millisecond {
		t.Errorf("renewed %v after the join: the refusals were not backed off", gap)
	}
	select {
	case id := <-r.ids:
		t.Errorf("OnSession(%q): the session changed", id)
	default:
	}
	logged := r.log.String()
	if !strings.Contains(logged, "level=ERROR") || !strings.Contains(logged, "has left swarm") || !strings.Contains(logged, "disk full") {
		t.Errorf("the refusals are not logged:\n%s", logged)
	}
}

// TestAttachForbidden: a build whose Attach is refused forbidden (it is not
// this node's) is forgotten: no more attaches, not held in the next
// session, and the refusal is logged as an error.
func TestAttachForbidden(t *testing.T) {
	node := fakedocker.NewNode("n1")
	id := node.Create("b-other")
	if err := node.Start(id); err != nil {
		t.Fatal(err)
	}
	node.Exit(id, 0)
	c := startCoord(t)
	c.answerAttach(func(at *wire.Attach, b *coordBuild) wire.Message {
		return wire.NewRefused(wire.RefusedForbidden, "build %s was launched on another node", at.BuildID)
	})
	r := runAgent(t, c, node.Docker())
	cs := c.next(t)
	r.next(t)
	if len(cs.holding.Builds) != 1 {
		t.Fatalf("holding %+v, want b-other", cs.holding.Builds)
	}
	c.waitBuild(t, "b-other", "refused attach ended", func(b *coordBuild) bool { return b.ended > 0 })

	cs.ws.Close()
	r.next(t)
	cs2 := c.next(t)
	r.next(t)
	if len(cs2.holding.Builds) != 0 {
		t.Errorf("the next session holds %+v, want none", cs2.holding.Builds)
	}
	if b := c.snapshot("b-other"); b.attaches != 1 {
		t.Errorf("%d attaches, want 1", b.attaches)
	}
	if logged := r.log.String(); !strings.Contains(logged, "level=ERROR") || !strings.Contains(logged, "launched on another node") {
		t.Errorf("the refusal is not logged as an error:\n%s", logged)
	}
}
