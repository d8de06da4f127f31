package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/forge-ci/forge/internal/atomicfile"
	"github.com/forge-ci/forge/wire"
)

// StateFile is the file in Config.StateDir that keeps the agent's
// certificate and its key (PEM, mode 0600), so that a restart needs no
// join token. One file, replaced by a rename, so a crash never leaves a
// certificate with another certificate's key.
const StateFile = "agent.pem"

// ErrNoCertificate: the agent has no usable certificate for its node (none,
// expired, for another node, or not from the forge CA) and no join token to
// get one (PROTOCOL.md §6.6). Run returns it: retrying cannot help.
var ErrNoCertificate = errors.New("agent: no usable certificate for this node")

// identity is the agent's current certificate (PROTOCOL.md §2, §6.6, §6.7).
// Run's goroutine (loading, joining, the TLS handshake) and a session's
// renewal goroutine share it, hence a mutex of its own.
type identity struct {
	mu       sync.Mutex
	cert     *tls.Certificate // nil: none, the agent joins before it connects
	leaf     *x509.Certificate
	received time.Time // renewal is due at RenewAt of the life left from here
}

func (id *identity) get() (*tls.Certificate, *x509.Certificate, time.Time) {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.cert, id.leaf, id.received
}

func (id *identity) set(cert *tls.Certificate, received time.Time) {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.cert, id.leaf, id.received = cert, cert.Leaf, received
}

func (id *identity) drop() {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.cert, id.leaf, id.received = nil, nil, time.Time{}
}

// clientCertificate is the TLS client's GetClientCertificate: each
// handshake presents the certificate current then, so a renewed one is used
// from the next connection on.
func (id *identity) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cert, _, _ := id.get()
	if cert == nil {
		return &tls.Certificate{}, nil // none: the coordinator will refuse, as it should
	}
	return cert, nil
}

// serial formats a certificate's serial number for logs.
func serial(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// checkCert says why cert cannot be this agent's certificate now, or sets
// its Leaf and returns nil: it names this node, chains to the forge CA
// (TLS.RootCAs) for client authentication, and is valid at now.
func (a *Agent) checkCert(cert *tls.Certificate, now time.Time) error {
	if len(cert.Certificate) == 0 {
		return errors.New("no certificate")
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parse certificate: %w", err)
		}
	}
	node, err := wire.NodeOf(leaf)
	if err != nil {
		return err
	}
	if node != a.nodeID {
		return fmt.Errorf("certificate %q (serial %s) names node %s; this is node %s", leaf.Subject.CommonName, serial(leaf), node, a.nodeID)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.cfg.TLS.RootCAs, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("certificate %q (serial %s): %w", leaf.Subject.CommonName, serial(leaf), err)
	}
	cert.Leaf = leaf
	return nil
}

// loadIdentity picks the certificate the agent starts with: the one kept
// in StateDir (the newest, renewed ones land there), else TLS's own. One
// that is unreadable, expired or for another node is logged and not used;
// with none the agent joins before it connects.
func (a *Agent) loadIdentity() {
	now := time.Now()
	if dir := a.cfg.StateDir; dir != "" {
		path := filepath.Join(dir, StateFile)
		data, err := os.ReadFile(path)
		if err == nil {
			var pair tls.Certificate
			if pair, err = tls.X509KeyPair(data, data); err == nil {
				err = a.checkCert(&pair, now)
			}
			if err == nil {
				// When it was received is not known: its start is the
				// earliest, so renewal comes early rather than late.
				a.id.set(&pair, pair.Leaf.NotBefore)
				a.log.Info("certificate loaded", "file", path, "serial", serial(pair.Leaf), "not_after", pair.Leaf.NotAfter)
				return
			}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("kept certificate not used", "file", path, "err", err)
		}
	}
	if len(a.cfg.TLS.Certificates) > 0 {
		pair := a.cfg.TLS.Certificates[0]
		if err := a.checkCert(&pair, now); err != nil {
			a.log.Warn("the agent's certificate (--tls-cert) is not used", "err", err)
			return
		}
		a.id.set(&pair, pair.Leaf.NotBefore)
		a.log.Info("certificate given", "serial", serial(pair.Leaf), "not_after", pair.Leaf.NotAfter)
	}
}

// ensureIdentity makes sure the agent has a certificate it can connect
// with, joining when it has none or only an expired one (PROTOCOL.md §6.6,
// §6.7 step 4). Without a join token that is ErrNoCertificate.
func (a *Agent) ensureIdentity(ctx context.Context) error {
	if _, leaf, _ := a.id.get(); leaf != nil {
		if time.Now().Before(leaf.NotAfter) {
			return nil
		}
		a.log.Warn("certificate expired", "serial", serial(leaf), "not_after", leaf.NotAfter)
		a.id.drop()
	}
	if a.cfg.JoinToken == nil {
		where := ""
		if a.cfg.StateDir != "" {
			where = fmt.Sprintf("; %s holds none valid", filepath.Join(a.cfg.StateDir, StateFile))
		}
		return fmt.Errorf("%w (node %s)%s: give a join token (--join-token-file), or a certificate for this node (--tls-cert/--tls-key, forge certs issue --role agent --node %s)",
			ErrNoCertificate, a.nodeID, where, a.nodeID)
	}
	return a.join(ctx)
}

// join trades the join token and a request for a new key for a certificate
// of this node (PROTOCOL.md §6.6), on a connection that verifies the
// coordinator exactly as a session does and presents no certificate.
func (a *Agent) join(ctx context.Context) error {
	token, err := a.cfg.JoinToken()
	if err != nil {
		return fmt.Errorf("join: read the join token: %w", err)
	}
	key, err := wire.NewKey()
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	csr, err := wire.NewCSR(key, a.nodeID)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	req := &wire.Join{Protocol: wire.ProtocolVersion, Token: token, NodeID: a.nodeID, CSR: csr}
	if err := req.Validate(); err != nil {
		return fmt.Errorf("join: %w", err) // before dialling: a bad token needs no coordinator to say so
	}

	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	raw, err := a.cfg.Dial(dctx, "tcp", a.cfg.Coordinator)
	cancel()
	if err != nil {
		return fmt.Errorf("join: dial %s: %w", a.cfg.Coordinator, err)
	}
	ws, err := wire.Client(tls.Client(raw, a.joinTLS), a.cfg.Session)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	defer ws.Close() // the coordinator closes it too, after its answer
	rctx, cancel := context.WithTimeout(ctx, wire.RequestTimeout)
	defer cancel()
	st, err := ws.Open(rctx)
	if err != nil {
		return fmt.Errorf("join: open stream: %w", err)
	}
	defer st.Close()
	codec := wire.NewCodec(st)
	err = codec.Send(req)
	// As with Hello: a refusal may arrive although the send failed.
	issued, rerr := wire.Expect[*wire.Issued](codec)
	var refused *wire.RefusedError
	if err == nil || errors.As(rerr, &refused) {
		err = rerr
	}
	if err != nil {
		if errors.As(err, &refused) {
			a.log.Error("coordinator refused to let this agent join", "code", refused.Code, "message", refused.Message)
		}
		return fmt.Errorf("join: %w", err)
	}
	cert, err := a.acceptIssued(issued, key)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	a.keep(cert, key)
	a.log.Info("joined: certificate issued", "serial", serial(cert.Leaf), "not_after", cert.Leaf.NotAfter)
	return nil
}

// acceptIssued checks an issued certificate (PROTOCOL.md §5.21) against
// the key it was asked for and as checkCert does.
func (a *Agent) acceptIssued(m *wire.Issued, key *ecdsa.PrivateKey) (*tls.Certificate, error) {
	leaf, err := x509.ParseCertificate(m.Certificate)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("issued certificate (serial %s) is not for the key this agent asked for", serial(leaf))
	}
	cert := &tls.Certificate{Certificate: [][]byte{m.Certificate}, PrivateKey: key, Leaf: leaf}
	if err := a.checkCert(cert, time.Now()); err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	return cert, nil
}

// keep makes cert the agent's certificate, received now, and writes it to
// StateDir. A failed write is logged: the certificate still serves until
// the agent restarts.
func (a *Agent) keep(cert *tls.Certificate, key *ecdsa.PrivateKey) {
	a.id.set(cert, time.Now())
	if a.cfg.StateDir == "" {
		return
	}
	if err := a.store(cert.Leaf, key); err != nil {
		a.log.Error("cannot keep the certificate; a restart will need the join token", "dir", a.cfg.StateDir, "err", err)
	}
}

func (a *Agent) store(leaf *x509.Certificate, key *ecdsa.PrivateKey) error {
	keyPEM, err := wire.KeyPEM(key)
	if err != nil {
		return err
	}
	a.storeMu.Lock()
	defer a.storeMu.Unlock()
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(a.cfg.StateDir, StateFile), append(wire.CertPEM(leaf), keyPEM...), 0o600)
}

// renewBackoffMin is the first wait after a failed renewal.
const renewBackoffMin = time.Second

// renewals renews the agent's certificate over session s at RenewAt of its
// life, counted from when the agent got it, until the session ends
// (PROTOCOL.md §6.7). A failure is retried with back-off, the wait capped
// at a tenth of the life left (at least renewBackoffMin).
func (a *Agent) renewals(ctx context.Context, s *session) {
	bo := backoff{min: renewBackoffMin, max: renewBackoffMin}
	var retry time.Duration // 0: wait for the current certificate's time
	for {
		_, leaf, received := a.id.get()
		if leaf == nil {
			return // dropped: nothing to renew; the next connection joins
		}
		wait := retry
		if wait == 0 {
			wait = time.Until(received.Add(time.Duration(wire.RenewAt * float64(leaf.NotAfter.Sub(received)))))
		}
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		err := a.renew(ctx, s)
		if err == nil {
			bo.reset()
			retry = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		bo.max = max(renewBackoffMin, time.Until(leaf.NotAfter)/10)
		retry = bo.next()
		var refused *wire.RefusedError
		if errors.As(err, &refused) && refused.Code == wire.RefusedForbidden {
			a.log.Error("coordinator refused to renew this agent's certificate", "code", refused.Code, "message", refused.Message,
				"not_after", leaf.NotAfter, "retry_in", retry.Round(time.Millisecond))
		} else {
			a.log.Warn("certificate renewal failed", "err", err, "not_after", leaf.NotAfter, "retry_in", retry.Round(time.Millisecond))
		}
	}
}

// renew asks for a certificate for a new key on session s (PROTOCOL.md
// §6.7) and keeps it; the session goes on with the certificate it
// started with, the next connection presents the new one.
func (a *Agent) renew(ctx context.Context, s *session) error {
	key, err := wire.NewKey()
	if err != nil {
		return err
	}
	csr, err := wire.NewCSR(key, a.nodeID)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, wire.RequestTimeout)
	defer cancel()
	st, err := s.ws.Open(rctx)
	if err != nil {
		return fmt.Errorf("open renew stream: %w", err)
	}
	defer st.Close()
	codec := wire.NewCodec(st)
	if err := codec.Send(&wire.Renew{CSR: csr}); err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	issued, err := wire.Expect[*wire.Issued](codec)
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	cert, err := a.acceptIssued(issued, key)
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	a.keep(cert, key)
	a.log.Info("certificate renewed", "serial", serial(cert.Leaf), "not_after", cert.Leaf.NotAfter, "session", s.id)
	return nil
}
