package agents

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// Issuer signs the agents' certificates: a joining agent's first, with the
// join token, and a live session's renewals (PROTOCOL.md §6.6, §6.7).
type Issuer struct {
	CA *wire.CA // with its key
	// TTL is how long a signed certificate is valid
	// (wire.DefaultAgentCertTTL when zero).
	TTL time.Duration
	// Token returns the current join token; it is called for every join,
	// so a rotated token file takes effect at once. nil: joins are refused.
	Token func() (string, error)
}

// TokenFile returns an Issuer.Token that reads path on every join: rotating
// the token is writing a new file.
func TokenFile(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("join token: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("join token %s is empty", path)
		}
		return t, nil
	}
}

func (i *Issuer) ttl() time.Duration {
	if i.TTL > 0 {
		return i.TTL
	}
	return wire.DefaultAgentCertTTL
}

// Revocations is the record of revoked nodes (store.Store).
type Revocations interface {
	AgentRevocation(ctx context.Context, node string) (store.Revocation, error)
	RevokeAgent(ctx context.Context, node string, at time.Time) error
	AllowAgent(ctx context.Context, node string) (bool, error)
}

// Errors of agent identity; refusals wrap them.
var (
	ErrRevoked    = errors.New("node is revoked")
	ErrWrongToken = errors.New("wrong join token")
	ErrNoIssuer   = errors.New("this coordinator signs no agent certificates (no --tls-ca-key)")
)

// refusal is an identity check's verdict: the wire code and why.
type refusal struct {
	code string
	err  error
}

func refuse(code string, err error) *refusal { return &refusal{code: code, err: err} }

// issuedAt is when cert was issued: forge back-dates NotBefore by
// ClockSkew.
func issuedAt(cert *x509.Certificate) time.Time { return cert.NotBefore.Add(wire.ClockSkew) }

// issuedBefore reports whether cert was issued before at. Certificates
// carry whole seconds, so one issued in at's second counts as before:
// the node joins again a second later.
func issuedBefore(cert *x509.Certificate, at time.Time) bool {
	return issuedAt(cert).Before(at.Truncate(time.Second).Add(time.Second))
}

// checkRevoked refuses a revoked node, and a certificate (when given)
// issued before the node's last revocation.
func (s *Hub) checkRevoked(ctx context.Context, node string, cert *x509.Certificate) error {
	s.mu.Lock()
	revoked := s.revoked[node]
	s.mu.Unlock()
	if revoked {
		return fmt.Errorf("%w: %s (forge agents allow %s lets it join again)", ErrRevoked, node, node)
	}
	if s.cfg.Revocations == nil {
		return nil
	}
	r, err := s.cfg.Revocations.AgentRevocation(ctx, node)
	if err != nil {
		return err
	}
	if r.Revoked {
		return fmt.Errorf("%w: %s (forge agents allow %s lets it join again)", ErrRevoked, node, node)
	}
	if cert != nil && !r.RevokedAt.IsZero() && issuedBefore(cert, r.RevokedAt) {
		return fmt.Errorf("%w: certificate %x of node %s was issued at %s, before the node's revocation at %s; the agent must join again",
			ErrRevoked, cert.SerialNumber, node, issuedAt(cert).Format(time.RFC3339), r.RevokedAt.Format(time.RFC3339))
	}
	return nil
}

// checkHello decides whether the session whose certificate is cert may
// speak for node, as its Hello says (PROTOCOL.md §6.1 step 3).
func (s *Hub) checkHello(ctx context.Context, cert *x509.Certificate, node string, remote net.Addr) error {
	certNode, err := wire.NodeOf(cert)
	if err != nil {
		return err
	}
	if certNode != node {
		return fmt.Errorf("certificate %x is for node %s, but hello says node %s", cert.SerialNumber, certNode, node)
	}
	if err := s.checkRevoked(ctx, node, cert); err != nil {
		return err
	}
	return s.cfg.Verify.VerifyAgent(ctx, node, remote)
}

// serveJoin serves a session without a client certificate: one join
// stream, then the session ends (PROTOCOL.md §6.6).
func (s *Hub) serveJoin(ctx context.Context, ys *wire.Session, remote net.Addr, log *slog.Logger) {
	hctx, cancel := context.WithTimeout(ctx, helloTimeout)
	st, err := ys.Accept(hctx)
	cancel()
	if err != nil {
		log.Warn("agent without a certificate opened no stream", "err", err)
		return
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(helloTimeout))
	c := wire.NewCodec(st)
	m, err := c.Recv()
	if err != nil {
		log.Warn("agent join", "err", err)
		c.Send(wire.NewRefused(wire.RefusedBadRequest, "%v", err))
		return
	}
	j, ok := m.(*wire.Join)
	if !ok {
		log.Error("agent refused", "code", wire.RefusedIdentity, "err", "no client certificate", "message", m.MessageType())
		c.Send(wire.NewRefused(wire.RefusedIdentity, "no client certificate: a session without one may only join; present an agent certificate"))
		return
	}
	log = log.With("node", j.NodeID)
	vctx, vcancel := context.WithTimeout(ctx, requestTimeout)
	cert, r := s.join(vctx, j, remote)
	vcancel()
	if r != nil {
		log.Error("agent join refused", "code", r.code, "err", r.err)
		c.Send(wire.NewRefused(r.code, "join as node %s: %v", j.NodeID, r.err))
		return
	}
	if err := c.Send(&wire.Issued{Certificate: cert.Raw}); err != nil {
		// Often only that the agent, served, closed first.
		log.Info("agent join: send certificate", "err", err)
	}
	log.Info("agent joined", "serial", fmt.Sprintf("%x", cert.SerialNumber), "expires", cert.NotAfter)
}

// join checks a Join and signs the agent's first certificate.
func (s *Hub) join(ctx context.Context, j *wire.Join, remote net.Addr) (*x509.Certificate, *refusal) {
	is := s.cfg.Issuer
	if is == nil {
		return nil, refuse(wire.RefusedForbidden, fmt.Errorf("%w; give the agent a certificate from forge certs issue --role agent --node %s", ErrNoIssuer, j.NodeID))
	}
	if r := wire.ProtocolRefusal(j.Protocol); r != nil {
		return nil, refuse(r.Code, errors.New(r.Message))
	}
	if is.Token == nil {
		return nil, refuse(wire.RefusedForbidden, errors.New("this coordinator has no join token (--join-token-file)"))
	}
	want, err := is.Token()
	if err != nil {
		return nil, refuse(wire.RefusedInternal, err)
	}
	// Hashes first, so the comparison's time says nothing of the length.
	got, exp := sha256.Sum256([]byte(j.Token)), sha256.Sum256([]byte(want))
	if subtle.ConstantTimeCompare(got[:], exp[:]) != 1 {
		return nil, refuse(wire.RefusedIdentity, ErrWrongToken)
	}
	if err := s.checkRevoked(ctx, j.NodeID, nil); err != nil {
		code := wire.RefusedInternal
		if errors.Is(err, ErrRevoked) {
			code = wire.RefusedForbidden
		}
		return nil, refuse(code, err)
	}
	if err := s.cfg.Verify.VerifyAgent(ctx, j.NodeID, remote); err != nil {
		return nil, refuse(wire.RefusedIdentity, err)
	}
	cert, err := is.CA.SignAgent(j.CSR, j.NodeID, j.NodeID, is.ttl())
	if err != nil {
		return nil, refuse(wire.RefusedBadRequest, err)
	}
	return cert, nil
}

// serveRenew answers a live session's Renew: a certificate for the
// session's node only (PROTOCOL.md §6.7).
func (s *Hub) serveRenew(ctx context.Context, ac *agentConn, c *wire.Codec, m *wire.Renew, log *slog.Logger) {
	cert, r := s.renew(ctx, ac, m)
	if r != nil {
		log.Error("certificate renewal refused", "code", r.code, "err", r.err)
		c.Send(wire.NewRefused(r.code, "renew for node %s: %v", ac.info.NodeID, r.err))
		return
	}
	if err := c.Send(&wire.Issued{Certificate: cert.Raw}); err != nil {
		log.Warn("certificate renewal: send", "err", err)
		return
	}
	s.mu.Lock()
	ac.info.CertSerial, ac.info.CertExpires = serialOf(cert), cert.NotAfter.UTC()
	ac.life = cert.NotAfter.Sub(issuedAt(cert))
	s.mu.Unlock()
	select {
	case ac.renewed <- struct{}{}:
	default: // the watcher has one pending already and reads the latest
	}
	log.Info("agent certificate renewed", "serial", serialOf(cert), "expires", cert.NotAfter)
}

func (s *Hub) renew(ctx context.Context, ac *agentConn, m *wire.Renew) (*x509.Certificate, *refusal) {
	node := ac.info.NodeID
	if s.cfg.Issuer == nil {
		return nil, refuse(wire.RefusedForbidden, fmt.Errorf("%w; the agent keeps its certificate until it expires", ErrNoIssuer))
	}
	// A request naming another identity is a forbidden one, not a
	// malformed one: this session speaks for its node only.
	if csr, err := x509.ParseCertificateRequest(m.CSR); err == nil {
		for _, u := range csr.URIs {
			if u.String() != wire.AgentURI(node).String() {
				return nil, refuse(wire.RefusedForbidden, fmt.Errorf("the request asks for %s; this session speaks for node %s only", u, node))
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if err := s.checkRevoked(rctx, node, nil); err != nil {
		return nil, refuse(wire.RefusedForbidden, err)
	}
	if err := s.cfg.Verify.VerifyAgent(rctx, node, ac.remote); err != nil {
		return nil, refuse(wire.RefusedForbidden, err)
	}
	cert, err := s.cfg.Issuer.CA.SignAgent(m.CSR, node, ac.info.Hostname, s.cfg.Issuer.ttl())
	if err != nil {
		return nil, refuse(wire.RefusedBadRequest, err)
	}
	return cert, nil
}

// watchCert closes ac's session when its latest certificate expires, and
// warns when a sixth of its life is left without a renewal. It ends with
// the session.
func (s *Hub) watchCert(ctx context.Context, ac *agentConn) {
	warned := false
	for {
		s.mu.Lock()
		expires, life, serial := ac.info.CertExpires, ac.life, ac.info.CertSerial
		s.mu.Unlock()
		warnIn := time.Until(expires.Add(-life / 6))
		if warned || warnIn < 0 {
			warnIn = time.Until(expires) // no second warning for one certificate
		}
		t := time.NewTimer(max(warnIn, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-ac.ys.Done():
			t.Stop()
			return
		case <-ac.renewed:
			t.Stop()
			warned = false
			continue
		case <-t.C:
		}
		if time.Now().Before(expires) {
			warned = true
			s.log.Warn("agent certificate has under a sixth of its life left and was not renewed",
				"node", ac.info.NodeID, "serial", serial, "expires", expires)
			continue
		}
		s.log.Warn("agent certificate expired: closing its session", "node", ac.info.NodeID,
			"serial", serial, "expired", expires)
		ac.ys.Close()
		return
	}
}

// Revoke revokes node's agent certificates (forge agents revoke): its live
// session is closed at once, its certificates are refused from now on, and
// the join token gets it no new one until Allow.
func (s *Hub) Revoke(ctx context.Context, node string) error {
	if err := wire.ValidNodeID(node); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if s.cfg.Revocations == nil {
		return errors.New("revoke: this hub keeps no revocations")
	}
	at := time.Now()
	if err := s.cfg.Revocations.RevokeAgent(ctx, node, at); err != nil {
		return fmt.Errorf("revoke %s: %w", node, err)
	}
	s.mu.Lock()
	s.revoked[node] = true
	ac := s.agents[node]
	s.mu.Unlock()
	if ac != nil {
		ac.ys.Close()
	}
	s.log.Warn("agent revoked", "node", node, "session_closed", ac != nil)
	return nil
}

// Allow lifts node's revocation (forge agents allow); the node joins
// again with the token, since certificates issued before the revocation
// stay refused. It reports whether the node was revoked.
func (s *Hub) Allow(ctx context.Context, node string) (bool, error) {
	if err := wire.ValidNodeID(node); err != nil {
		return false, fmt.Errorf("allow: %w", err)
	}
	if s.cfg.Revocations == nil {
		return false, errors.New("allow: this hub keeps no revocations")
	}
	was, err := s.cfg.Revocations.AllowAgent(ctx, node)
	if err != nil {
		return false, fmt.Errorf("allow %s: %w", node, err)
	}
	s.mu.Lock()
	delete(s.revoked, node)
	s.mu.Unlock()
	s.log.Info("agent allowed", "node", node, "was_revoked", was)
	return was, nil
}

func serialOf(cert *x509.Certificate) string { return fmt.Sprintf("%x", cert.SerialNumber) }
