package wire

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// RoleError says a peer's certificate carries the wrong role: an agent
// certificate presented by the server, or a coordinator certificate
// presented by a client.
type RoleError struct {
	Subject string // the certificate's common name
	Got     Role
	Want    Role
}

func (e *RoleError) Error() string {
	return fmt.Sprintf("peer certificate has role %s, want %s (subject %q)", e.Got, e.Want, e.Subject)
}

// ServerConfig is the coordinator's TLS configuration for the agent
// listener (PROTOCOL.md §2): TLS 1.3 only, a client certificate chaining to caPool is
// required, and that certificate must have the agent role. cert is the
// coordinator's own certificate (role coordinator).
func ServerConfig(caPool *x509.CertPool, cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    caPool,
		// crypto/tls has already verified the chain and the ClientAuth
		// extended key usage when this runs; the role is ours to check.
		VerifyConnection: func(cs tls.ConnectionState) error {
			return requireRole(cs, RoleAgent)
		},
	}
}

// ClientConfig is the agent's TLS configuration for dialling the
// coordinator (PROTOCOL.md §2): TLS 1.3 only, the server's certificate must chain to caPool,
// be valid for serverName (host name or IP address, checked by crypto/tls)
// and have the coordinator role. cert is the agent's own certificate (role
// agent).
func ClientConfig(caPool *x509.CertPool, cert tls.Certificate, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      caPool,
		ServerName:   serverName,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return requireRole(cs, RoleCoordinator)
		},
	}
}

// AllowJoin returns a copy of a ServerConfig that also completes the
// handshake with a client that presents no certificate. Such a session
// may only join (PROTOCOL.md §6.6); the coordinator refuses it anything
// else. A client that presents a certificate is verified as before.
func AllowJoin(cfg *tls.Config) *tls.Config {
	c := cfg.Clone()
	c.ClientAuth = tls.VerifyClientCertIfGiven
	verify := cfg.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		return verify(cs)
	}
	return c
}

// JoinConfig is the agent's TLS configuration for joining (PROTOCOL.md
// §6.6): ClientConfig without a certificate of its own. The coordinator
// is verified exactly as ClientConfig verifies it, so the join token goes
// only to the real coordinator.
func JoinConfig(caPool *x509.CertPool, serverName string) *tls.Config {
	c := ClientConfig(caPool, tls.Certificate{}, serverName)
	c.Certificates = nil
	return c
}

// PeerCertificate returns the leaf certificate the peer presented. On a
// connection set up with ServerConfig or ClientConfig it has been verified.
func PeerCertificate(cs tls.ConnectionState) (*x509.Certificate, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, ErrNoPeerCertificate
	}
	return cs.PeerCertificates[0], nil
}

// PeerRole returns the role of the peer's certificate.
func PeerRole(cs tls.ConnectionState) (Role, error) {
	cert, err := PeerCertificate(cs)
	if err != nil {
		return "", err
	}
	return RoleOf(cert)
}

func requireRole(cs tls.ConnectionState, want Role) error {
	cert, err := PeerCertificate(cs)
	if err != nil {
		return err
	}
	got, err := RoleOf(cert)
	if err != nil {
		return err
	}
	if got != want {
		return &RoleError{Subject: cert.Subject.CommonName, Got: got, Want: want}
	}
	return nil
}
