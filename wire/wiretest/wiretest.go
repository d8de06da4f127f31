// Package wiretest is a test rig for code that speaks the wire: a
// throw-away PKI made in one call with wire's own functions, and pairs of
// real sessions (wire.Client and wire.Server, so real yamux and, over
// TCP, real TLS). Functions return errors; the Must* forms take a *testing.T
// or *testing.B, fail the test on error and close what they made when it
// ends.
package wiretest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/forge-ci/forge/wire"
)

// Timeout bounds every wait of this package.
const Timeout = 10 * time.Second

// ServerName is the name the coordinator certificate is valid for and
// ClientTLS expects: the loopback address every pair here listens on. The
// certificate is also valid for "localhost".
const ServerName = "127.0.0.1"

// AgentNode is the node Agent's certificate speaks for.
const AgentNode = "agent-node"

// PKI is a forge CA, valid for an hour, with a coordinator certificate and
// an agent certificate for AgentNode.
type PKI struct {
	CA          *wire.CA
	Pool        *x509.CertPool // just CA
	Coordinator tls.Certificate
	Agent       tls.Certificate
	// AgentCertPEM and AgentKeyPEM are Agent as PEM, for programs that
	// read certificate files.
	AgentCertPEM, AgentKeyPEM []byte
}

// NewPKI makes a CA, a coordinator certificate valid for ServerName and
// localhost, and an agent certificate.
func NewPKI() (*PKI, error) {
	ca, err := wire.NewCA("forge test CA", time.Hour)
	if err != nil {
		return nil, err
	}
	p := &PKI{CA: ca, Pool: ca.Pool()}
	p.Coordinator, _, _, err = p.issue(wire.IssueRequest{Role: wire.RoleCoordinator, Name: "coordinator", Hosts: []string{ServerName, "localhost"}})
	if err != nil {
		return nil, err
	}
	p.Agent, p.AgentCertPEM, p.AgentKeyPEM, err = p.issue(wire.IssueRequest{Role: wire.RoleAgent, Name: "agent", Node: AgentNode})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Issue issues another certificate from the CA, for more agents or for
// certificates a test expects to be refused.
func (p *PKI) Issue(req wire.IssueRequest) (tls.Certificate, error) {
	pair, _, _, err := p.issue(req)
	return pair, err
}

func (p *PKI) issue(req wire.IssueRequest) (tls.Certificate, []byte, []byte, error) {
	certPEM, keyPEM, err := p.CA.Issue(req)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("wiretest: key pair of %q: %w", req.Name, err)
	}
	return pair, certPEM, keyPEM, nil
}

// AgentTLS is the configuration of the agent of node (a certificate of its
// own, for a coordinator at ServerName): the coordinator binds a session
// only to the node its certificate names.
func (p *PKI) AgentTLS(node string) (*tls.Config, error) {
	pair, err := p.Issue(wire.IssueRequest{Role: wire.RoleAgent, Name: node, Node: node})
	if err != nil {
		return nil, err
	}
	return wire.ClientConfig(p.Pool, pair, ServerName), nil
}

// MustAgentTLS is p.AgentTLS for a test.
func (p *PKI) MustAgentTLS(t T, node string) *tls.Config {
	t.Helper()
	c, err := p.AgentTLS(node)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ServerTLS is the coordinator's configuration (wire.ServerConfig).
func (p *PKI) ServerTLS() *tls.Config { return wire.ServerConfig(p.Pool, p.Coordinator) }

// ClientTLS is the agent's configuration (wire.ClientConfig) for a
// coordinator at ServerName.
func (p *PKI) ClientTLS() *tls.Config { return wire.ClientConfig(p.Pool, p.Agent, ServerName) }

// TCPPair returns the two ends of a new TCP connection on the loopback
// address.
func TCPPair() (client, server net.Conn, err error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ServerName, "0"))
	if err != nil {
		return nil, nil, fmt.Errorf("wiretest: listen: %w", err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() { // owner: TCPPair, which receives its result below
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	client, err = net.DialTimeout("tcp", ln.Addr().String(), Timeout)
	if err != nil {
		ln.Close() // ends the Accept
		<-ch
		return nil, nil, fmt.Errorf("wiretest: dial: %w", err)
	}
	var a accepted
	select {
	case a = <-ch:
	case <-time.After(Timeout):
		ln.Close()
		a = <-ch
	}
	if a.err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("wiretest: accept: %w", a.err)
	}
	return client, a.c, nil
}

// TLSConns returns a loopback TCP connection with TLS on both ends, the
// handshake done: agent with ClientTLS, coordinator with ServerTLS.
func (p *PKI) TLSConns() (agent, coordinator *tls.Conn, err error) {
	a, c, err := TCPPair()
	if err != nil {
		return nil, nil, err
	}
	agent, coordinator = tls.Client(a, p.ClientTLS()), tls.Server(c, p.ServerTLS())
	errs := Both(func() { a.Close(); c.Close() },
		func() error { return agent.Handshake() },
		func() error { return coordinator.Handshake() })
	if err := errors.Join(errs...); err != nil {
		a.Close()
		c.Close()
		return nil, nil, fmt.Errorf("wiretest: TLS handshake: %w", err)
	}
	return agent, coordinator, nil
}

// Sessions starts wire.Client on agentConn and wire.Server on coordConn at
// the same time (a TLS handshake needs both) with cfg on both sides. On
// error both connections are closed.
func Sessions(agentConn, coordConn net.Conn, cfg *wire.SessionConfig) (agent, coordinator *wire.Session, err error) {
	errs := Both(func() { agentConn.Close(); coordConn.Close() },
		func() (err error) { agent, err = wire.Client(agentConn, cfg); return err },
		func() (err error) { coordinator, err = wire.Server(coordConn, cfg); return err })
	if err := errors.Join(errs...); err != nil {
		for _, s := range []*wire.Session{agent, coordinator} {
			if s != nil {
				s.Close()
			}
		}
		agentConn.Close()
		coordConn.Close()
		return nil, nil, err
	}
	return agent, coordinator, nil
}

// PipePair is a session pair over net.Pipe: no TLS, no kernel buffers
// (a write waits for the peer's read).
func PipePair(cfg *wire.SessionConfig) (agent, coordinator *wire.Session, err error) {
	a, c := net.Pipe()
	return Sessions(a, c, cfg)
}

// Pair is a session pair as in production: loopback TCP, TLS with p's
// certificates, the agent the yamux client.
func (p *PKI) Pair(cfg *wire.SessionConfig) (agent, coordinator *wire.Session, err error) {
	a, c, err := TCPPair()
	if err != nil {
		return nil, nil, err
	}
	return Sessions(tls.Client(a, p.ClientTLS()), tls.Server(c, p.ServerTLS()), cfg)
}

// Both runs sides at once (the two ends of an exchange) and waits for
// them within Timeout, returning their errors in order. Past Timeout it
// calls abort, which must unblock them (close their connections), still
// waits, so no side outlives it, and appends a time-out error.
func Both(abort func(), sides ...func() error) []error {
	errs := make([]error, len(sides))
	done := make(chan struct{}, len(sides))
	for i, side := range sides {
		go func() { // owner: Both, which waits for every side
			errs[i] = side()
			done <- struct{}{}
		}()
	}
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for received := 0; received < len(sides); received++ {
		select {
		case <-done:
		case <-timer.C:
			abort()
			for ; received < len(sides); received++ {
				<-done
			}
			return append(errs, fmt.Errorf("wiretest: not done within %s", Timeout))
		}
	}
	return errs
}

// T is what the Must* functions need of a *testing.T or *testing.B.
type T interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// MustPKI is NewPKI for a test.
func MustPKI(t T) *PKI {
	t.Helper()
	p, err := NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// MustIssue is p.Issue for a test.
func (p *PKI) MustIssue(t T, req wire.IssueRequest) tls.Certificate {
	t.Helper()
	c, err := p.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// MustTCPPair is TCPPair for a test; both ends are closed when it ends.
func MustTCPPair(t T) (client, server net.Conn) {
	t.Helper()
	client, server, err := TCPPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// MustTLSConns is p.TLSConns for a test; both are closed when it ends.
func (p *PKI) MustTLSConns(t T) (agent, coordinator *tls.Conn) {
	t.Helper()
	agent, coordinator, err := p.TLSConns()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close(); coordinator.Close() })
	return agent, coordinator
}

// MustSessions is Sessions for a test; both sessions are closed when it
// ends.
func MustSessions(t T, agentConn, coordConn net.Conn, cfg *wire.SessionConfig) (agent, coordinator *wire.Session) {
	t.Helper()
	agent, coordinator, err := Sessions(agentConn, coordConn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close(); coordinator.Close() })
	return agent, coordinator
}

// MustPipePair is PipePair for a test; closed when it ends.
func MustPipePair(t T, cfg *wire.SessionConfig) (agent, coordinator *wire.Session) {
	t.Helper()
	a, c := net.Pipe()
	return MustSessions(t, a, c, cfg)
}

// MustPair is p.Pair for a test; closed when it ends.
func (p *PKI) MustPair(t T, cfg *wire.SessionConfig) (agent, coordinator *wire.Session) {
	t.Helper()
	a, c := MustTCPPair(t)
	return MustSessions(t, tls.Client(a, p.ClientTLS()), tls.Server(c, p.ServerTLS()), cfg)
}
