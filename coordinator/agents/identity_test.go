package agents

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

const testToken = "forge_join_0123456789abcdef0123456789abcdef"

// revocations is an in-memory Revocations.
type revocations struct {
	mu sync.Mutex
	m  map[string]store.Revocation
}

func (r *revocations) AgentRevocation(_ context.Context, node string) (store.Revocation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[node], nil
}

func (r *revocations) RevokeAgent(_ context.Context, node string, at time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[node] = store.Revocation{Revoked: true, RevokedAt: at}
	return nil
}

func (r *revocations) AllowAgent(_ context.Context, node string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	x := r.m[node]
	was := x.Revoked
	x.Revoked = false
	r.m[node] = x
	return was, nil
}

// idRig is a hub that signs certificates, with the join token in a file.
type idRig struct {
	p         *wiretest.PKI
	hub       *Hub
	addr      string
	log       *syncbuf.Buffer
	tokenFile string
	logs      *logs.Store
}

func newIDRig(t *testing.T, ttl time.Duration, builds buildsFunc) *idRig {
	t.Helper()
	r := &idRig{p: wiretest.MustPKI(t), tokenFile: filepath.Join(t.TempDir(), "join-token"), logs: &logs.Store{Dir: t.TempDir()}}
	if err := os.WriteFile(r.tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if builds == nil {
		builds = startedOn("n1")
	}
	r.hub, r.addr, r.log = serveHub(t, Config{TLS: r.p.ServerTLS(), Logs: r.logs,
		Verify:      verifyFunc(func(node string, _ net.Addr) error { return nil }),
		Builds:      builds,
		Revocations: &revocations{m: map[string]store.Revocation{}},
		Issuer:      &Issuer{CA: r.p.CA, TTL: ttl, Token: TokenFile(r.tokenFile)}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(r.log.String())
		}
	})
	return r
}

// join runs the join conversation as an agent: no certificate, the
// coordinator verified. It returns the agent's TLS config with the issued
// certificate, or the error.
func (r *idRig) join(t *testing.T, token, node string, csr []byte, key *ecdsa.PrivateKey) (*tls.Config, *x509.Certificate, error) {
	t.Helper()
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	ys, err := wire.Client(tls.Client(conn, wire.JoinConfig(r.p.Pool, wiretest.ServerName)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ys.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ys.Open(ctx)
	if err != nil {
		return nil, nil, err
	}
	c := wire.NewCodec(st)
	// As an agent must: the answer is read even when the send failed,
	// since a refusing coordinator may close the session first.
	serr := c.Send(&wire.Join{Protocol: wire.ProtocolVersion, Token: token, NodeID: node, CSR: csr})
	is, err := wire.Expect[*wire.Issued](c)
	if err != nil {
		return nil, nil, errors.Join(err, serr)
	}
	cert, err := x509.ParseCertificate(is.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	pair := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	return wire.ClientConfig(r.p.Pool, pair, wiretest.ServerName), cert, nil
}

// joinAndConnect joins as node with key's request, then connects with
// the certificate, and waits until the hub has bound the session.
func (r *idRig) joinAndConnect(t *testing.T, node string, key *ecdsa.PrivateKey, csr []byte) (*tls.Config, *x509.Certificate, *wire.Session) {
	t.Helper()
	tc, cert, err := r.join(t, testToken, node, csr, key)
	if err != nil {
		t.Fatal(err)
	}
	ys, _, err := rawAgentTLS(t, tc, r.addr, hello(node))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "agent bound", func() bool {
		for _, a := range r.hub.Agents() {
			if a.NodeID == node {
				return true
			}
		}
		return false
	})
	return tc, cert, ys
}

func newKeyCSR(t *testing.T, node string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := wire.NewCSR(key, node)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func wantRefused(t *testing.T, what string, err error, code, text string) {
	t.Helper()
	var r *wire.RefusedError
	if !errors.As(err, &r) || r.Code != code || !strings.Contains(r.Message, text) {
		t.Errorf("%s: %v, want refused %s with %q", what, err, code, text)
	}
}

// A joining agent gets a certificate for its node only, with the token; it
// then connects with it. Every bad join is refused with a reason both
// sides log, and issues nothing.
func TestJoin(t *testing.T) {
	r := newIDRig(t, time.Hour, nil)
	key, csr := newKeyCSR(t, "n1")

	for _, tc := range []struct {
		name, token, node string
		csr               []byte
		code, text        string
	}{
		{"wrong token", testToken + "x", "n1", csr, wire.RefusedIdentity, "wrong join token"},
		{"csr for another node", testToken, "n2", csr, wire.RefusedBadRequest, "spiffe://forge/agent/n1; this agent may have only spiffe://forge/agent/n2"},
		{"rsa key", testToken, "n1", rsaCSR(t), wire.RefusedBadRequest, "want ECDSA P-256"},
		{"extra names", testToken, "n1", csrWith(t, []string{"coordinator"}, nil), wire.RefusedBadRequest, "DNS, IP or e-mail names"},
		{"coordinator role", testToken, "n1", csrWith(t, nil, []string{"spiffe://forge/coordinator"}), wire.RefusedBadRequest, "spiffe://forge/coordinator"},
		{"garbage csr", testToken, "n1", []byte{0x30, 1, 2}, wire.RefusedBadRequest, "certificate request refused"},
	} {
		_, _, err := r.join(t, tc.token, tc.node, tc.csr, key)
		wantRefused(t, tc.name, err, tc.code, tc.text)
		if !strings.Contains(r.log.String(), tc.text) {
			t.Errorf("%s: the coordinator's log lacks %q", tc.name, tc.text)
		}
	}
	if strings.Contains(r.log.String(), "agent joined") {
		t.Fatalf("a refused join issued a certificate:\n%s", r.log)
	}

	tc, cert, err := r.join(t, testToken, "n1", csr, key)
	if err != nil {
		t.Fatal(err)
	}
	if node, err := wire.NodeOf(cert); node != "n1" || err != nil {
		t.Fatalf("issued certificate names %q (%v), URIs %v", node, err, cert.URIs)
	}
	if life := time.Until(cert.NotAfter); life > time.Hour || life < 59*time.Minute {
		t.Errorf("certificate valid for %v, want the hub's TTL of 1h", life)
	}
	if _, _, err := rawAgentTLS(t, tc, r.addr, hello("n1")); err != nil {
		t.Fatalf("session with the joined certificate: %v", err)
	}
	waitFor(t, "agent bound", func() bool { a := r.hub.Agents(); return len(a) == 1 && a[0].CertSerial == serialOf(cert) })
	if a := r.hub.Agents()[0]; !a.CertExpires.Equal(cert.NotAfter.UTC()) {
		t.Errorf("agents list says the certificate expires %v, want %v", a.CertExpires, cert.NotAfter)
	}

	// A rotated token: the old one is refused, the new one joins, and the
	// certificate issued with the old one still connects.
	if err := os.WriteFile(r.tokenFile, []byte(testToken+"-rotated\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = r.join(t, testToken, "n2", mustCSR(t, "n2"), key)
	wantRefused(t, "old token after rotation", err, wire.RefusedIdentity, "wrong join token")
	k2, csr2 := newKeyCSR(t, "n2")
	if _, _, err := r.join(t, testToken+"-rotated", "n2", csr2, k2); err != nil {
		t.Fatalf("new token: %v", err)
	}
	if _, _, err := rawAgentTLS(t, tc, r.addr, hello("n1")); err != nil {
		t.Fatalf("a certificate issued before the rotation: %v", err)
	}
}

func mustCSR(t *testing.T, node string) []byte {
	_, csr := newKeyCSR(t, node)
	return csr
}

func rsaCSR(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func csrWith(t *testing.T, dns, uris []string) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}, DNSNames: dns}
	for _, u := range uris {
		pu, _ := url.Parse(u)
		req.URIs = append(req.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, req, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Without a CA key, or without a token, nobody joins; a session without a
// certificate may do nothing but join.
func TestJoinClosedByDefault(t *testing.T) {
	p := wiretest.MustPKI(t)
	key, csr := newKeyCSR(t, "n1")
	for _, tc := range []struct {
		name       string
		issuer     *Issuer
		code, text string
	}{
		{"no issuer", nil, "", ""}, // the TLS handshake itself wants a certificate
		{"no token", &Issuer{CA: p.CA}, wire.RefusedForbidden, "no join token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr, _ := serveHub(t, Config{TLS: p.ServerTLS(), Verify: verifyFunc(func(string, net.Addr) error { return nil }),
				Builds: startedOn("n1"), Issuer: tc.issuer})
			r := &idRig{p: p, addr: addr}
			_, _, err := r.join(t, testToken, "n1", csr, key)
			if tc.code == "" {
				if err == nil {
					t.Fatal("joined a coordinator without a CA key")
				}
				return
			}
			wantRefused(t, tc.name, err, tc.code, tc.text)
		})
	}
	// A certificate-less session that says hello instead of join.
	r := newIDRig(t, time.Hour, nil)
	_, _, err := rawAgentTLS(t, wire.JoinConfig(r.p.Pool, wiretest.ServerName), r.addr, hello("n1"))
	wantRefused(t, "hello without a certificate", err, wire.RefusedIdentity, "present an agent certificate")
	if len(r.hub.Agents()) != 0 {
		t.Fatal("a session without a certificate was bound")
	}
}

// The certificate names the node: a hello for another node, a certificate
// without a node, an expired certificate are refused, nothing bound.
func TestHelloMustMatchCertificate(t *testing.T) {
	r := newIDRig(t, time.Hour, nil)
	b := r.p.MustAgentTLS(t, "nodeB")
	_, _, err := rawAgentTLS(t, b, r.addr, hello("nodeA"))
	wantRefused(t, "B's certificate saying A", err, wire.RefusedIdentity, "is for node nodeB, but hello says node nodeA")

	noNode := r.p.MustAgentTLS(t, "x")
	// An agent certificate as made before per-node identity: no /<node-id>.
	oldPair := issueRaw(t, r.p, []*url.URL{wire.RoleAgent.URI()}, time.Now().Add(-time.Minute), time.Hour)
	noNode.Certificates = []tls.Certificate{oldPair}
	_, _, err = rawAgentTLS(t, noNode, r.addr, hello("x"))
	wantRefused(t, "certificate without a node", err, wire.RefusedIdentity, "names no node")

	expired := r.p.MustAgentTLS(t, "n1")
	expired.Certificates = []tls.Certificate{issueRaw(t, r.p, []*url.URL{wire.AgentURI("n1")}, time.Now().Add(-2*time.Hour), time.Hour)}
	_, _, err = rawAgentTLS(t, expired, r.addr, hello("n1"))
	if err == nil {
		t.Fatal("an expired certificate was accepted")
	}
	if len(r.hub.Agents()) != 0 {
		t.Fatalf("bound: %+v", r.hub.Agents())
	}
}

// issueRaw signs a client certificate with exactly uris, valid from
// notBefore for life.
func issueRaw(t *testing.T, p *wiretest.PKI, uris []*url.URL, notBefore time.Time, life time.Duration) tls.Certificate {
	t.Helper()
	key, _ := wire.NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "raw"},
		NotBefore: notBefore, NotAfter: notBefore.Add(life), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: uris}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA.Cert, &key.PublicKey, p.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// Revoke closes the node's live session at once; its certificates are
// refused from then on, the token gets it none until Allow, and after
// Allow only a certificate issued since (a new join) connects.
func TestRevokeAndAllow(t *testing.T) {
	r := newIDRig(t, time.Hour, nil)
	key, csr := newKeyCSR(t, "n1")
	tc, _, ys := r.joinAndConnect(t, "n1", key, csr)
	start := time.Now()
	if err := r.hub.Revoke(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ys.Done():
		t.Logf("revoke to session closed (as the agent sees it): %v", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked node's session is still open")
	}
	waitFor(t, "agent unbound", func() bool { return len(r.hub.Agents()) == 0 })

	_, _, err := rawAgentTLS(t, tc, r.addr, hello("n1"))
	wantRefused(t, "revoked node's certificate", err, wire.RefusedIdentity, "node is revoked")
	_, _, err = r.join(t, testToken, "n1", mustCSR(t, "n1"), key)
	wantRefused(t, "revoked node joining", err, wire.RefusedForbidden, "node is revoked")

	if was, err := r.hub.Allow(context.Background(), "n1"); err != nil || !was {
		t.Fatalf("allow: %v %v", was, err)
	}
	_, _, err = rawAgentTLS(t, tc, r.addr, hello("n1"))
	wantRefused(t, "certificate issued before the revocation", err, wire.RefusedIdentity, "before the node's revocation")
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second))) // certificates have whole seconds
	tc2, _, err := r.join(t, testToken, "n1", csr, key)
	if err != nil {
		t.Fatalf("join after allow: %v", err)
	}
	if _, _, err := rawAgentTLS(t, tc2, r.addr, hello("n1")); err != nil {
		t.Fatalf("new certificate after allow: %v", err)
	}
	if err := r.hub.Revoke(context.Background(), "n1/../n2"); err == nil {
		t.Error("revoked a malformed node id")
	}
}

// renew asks for a certificate on a live session.
func renew(t *testing.T, ys *wire.Session, csr []byte) (*x509.Certificate, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ys.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c := wire.NewCodec(st)
	if err := c.Send(&wire.Renew{CSR: csr}); err != nil {
		return nil, err
	}
	is, err := wire.Expect[*wire.Issued](c)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(is.Certificate)
}

// A session renews its certificate for its own node only; the hub then
// closes it when the renewed certificate expires, not the first.
func TestRenew(t *testing.T) {
	r := newIDRig(t, 3*time.Second, nil)
	key, csr := newKeyCSR(t, "n1")
	_, first, ys := r.joinAndConnect(t, "n1", key, csr)
	var err error

	_, err = renew(t, ys, mustCSR(t, "n2"))
	wantRefused(t, "renewal for another node", err, wire.RefusedForbidden, "this session speaks for node n1 only")
	_, err = renew(t, ys, rsaCSR(t))
	wantRefused(t, "renewal with an RSA key", err, wire.RefusedBadRequest, "want ECDSA P-256")

	for i := range 3 {
		time.Sleep(1500 * time.Millisecond) // past half the life: without renewals the session would end
		cert, err := renew(t, ys, mustCSR(t, "n1"))
		if err != nil {
			t.Fatalf("renewal %d: %v", i+1, err)
		}
		if n, _ := wire.NodeOf(cert); n != "n1" || cert.SerialNumber.Cmp(first.SerialNumber) == 0 {
			t.Fatalf("renewal %d: node %s serial %x", i+1, n, cert.SerialNumber)
		}
		waitFor(t, "new serial listed", func() bool { a := r.hub.Agents(); return len(a) == 1 && a[0].CertSerial == serialOf(cert) })
	}
	select {
	case <-ys.Done():
		t.Fatal("the session ended although its certificate was renewed")
	default:
	}
	// No more renewals: the session ends when the last certificate expires.
	select {
	case <-ys.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived its certificate")
	}
	if !strings.Contains(r.log.String(), "under a sixth of its life left") {
		t.Errorf("no warning before the certificate expired:\n%s", r.log)
	}
}

// A build's log stream belongs to the node and container it was launched
// on: another node's attach, or another container, is refused and
// stores nothing; the build's own node then reports its real exit.
func TestLogBoundToNode(t *testing.T) {
	r := newIDRig(t, time.Hour, func(id string) (*coordinator.Build, error) {
		switch id {
		case "onB":
			return &coordinator.Build{ID: id, State: coordinator.Running, NodeID: "nodeB", ContainerID: "cB", Started: time.Now()}, nil
		case "landed":
			return &coordinator.Build{ID: id, State: coordinator.Running, NodeID: "nodeA", ContainerID: "cA"}, nil
		}
		return nil, store.ErrNotFound
	})
	for _, id := range []string{"onB", "landed"} {
		if err := r.logs.Create(id); err != nil {
			t.Fatal(err)
		}
	}
	a, _, err := rawAgent(t, r.p, r.addr, hello("nodeA"))
	if err != nil {
		t.Fatal(err)
	}
	bs, _, err := rawAgent(t, r.p, r.addr, hello("nodeB"))
	if err != nil {
		t.Fatal(err)
	}
	attach := func(ys *wire.Session, att wire.Attach) (*wire.Codec, error) {
		st, err := ys.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		st.SetDeadline(time.Now().Add(10 * time.Second))
		c := wire.NewCodec(st)
		if err := c.Send(&att); err != nil {
			return c, err
		}
		_, err = wire.Expect[*wire.Attached](c)
		return c, err
	}
	for _, tc := range []struct {
		name string
		from *wire.Session
		att  wire.Attach
		text string
	}{
		{"another node's build", a, wire.Attach{BuildID: "onB", ContainerID: "cB"}, "runs on node nodeB, not nodeA"},
		{"its build, another container", bs, wire.Attach{BuildID: "onB", ContainerID: "other"}, "runs in container cB, not other"},
		{"a build not launched yet", a, wire.Attach{BuildID: "landed", ContainerID: "cA"}, "has not been launched"},
	} {
		_, err := attach(tc.from, tc.att)
		wantRefused(t, tc.name, err, wire.RefusedForbidden, tc.text)
		if !strings.Contains(r.log.String(), tc.text) {
			t.Errorf("%s: the coordinator's log lacks %q", tc.name, tc.text)
		}
	}
	_, err = attach(a, wire.Attach{BuildID: "ghost", ContainerID: "c"})
	wantRefused(t, "unknown build", err, wire.RefusedNotFound, "unknown build")
	// Node A tries to write B's log and exit anyway, on the refused stream.
	if x, _ := r.logs.Exited("onB"); x != nil {
		t.Fatalf("node A recorded B's exit: %+v", x)
	}
	if at, _ := r.logs.Attach(context.Background(), "", &wire.Attach{BuildID: "onB", ContainerID: "cB"}); at.StdoutOffset+at.StderrOffset != 0 {
		t.Fatalf("output stored for B's build: %+v", at)
	}
	// B's own agent: attach, log, exit 7, recorded.
	c, err := attach(bs, wire.Attach{BuildID: "onB", ContainerID: "cB"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(&wire.Log{Seq: 1, Stream: wire.StreamStdout, Data: []byte("real\n")}); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(&wire.Exit{ExitCode: 7, LastSeq: 1, FinishedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Expect[*wire.ExitAck](c); err != nil {
		t.Fatal(err)
	}
	if x, _ := r.logs.Exited("onB"); x == nil || x.ExitCode != 7 {
		t.Fatalf("B's exit: %+v", x)
	}
}
