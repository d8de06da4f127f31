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
