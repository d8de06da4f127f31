package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Role is what a certificate lets its holder be on the wire: the
// coordinator (TLS server) or an agent (TLS client). It is carried as the
// URI SAN RoleURIPrefix+role, so it is covered by the CA's signature.
type Role string

// String returns the role's name.
func (r Role) String() string { return string(r) }

// URI returns the role's URI SAN, spiffe://forge/<role>.
func (r Role) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: "forge", Path: "/" + string(r)}
}

func (r Role) valid() bool { return r == RoleCoordinator || r == RoleAgent }

// ParseRole parses "coordinator" or "agent" (the `forge certs issue --role`
// values).
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.valid() {
		return "", fmt.Errorf("wire: unknown role %q (want %s or %s)", s, RoleCoordinator, RoleAgent)
	}
	return r, nil
}

// RoleOf returns the role stated by cert, by the rules of PROTOCOL.md §2
// (exactly one spiffe://forge/ URI SAN naming a known role; an agent's may
// name its node as one more path segment).
func RoleOf(cert *x509.Certificate) (Role, error) {
	r, _, err := roleURI(cert)
	return r, err
}

// NodeOf returns the swarm node an agent certificate speaks for: the
// <node-id> of its spiffe://forge/agent/<node-id> URI SAN. A certificate
// of another role, or an agent certificate without a node, is an error
// (ErrNoRole, ErrNoNode).
func NodeOf(cert *x509.Certificate) (string, error) {
	r, node, err := roleURI(cert)
	if err != nil {
		return "", err
	}
	if r != RoleAgent {
		return "", fmt.Errorf("%w: certificate %q has role %s", ErrNoNode, cert.Subject.CommonName, r)
	}
	if node == "" {
		return "", fmt.Errorf("%w: certificate %q (serial %x) has %s without /<node-id>; issue one with forge certs issue --node, or join with the token",
			ErrNoNode, cert.Subject.CommonName, cert.SerialNumber, RoleAgent.URI())
	}
	return node, nil
}

func roleURI(cert *x509.Certificate) (Role, string, error) {
	if cert == nil {
		return "", "", ErrNoPeerCertificate
	}
	var found []string
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" && u.Host == "forge" {
			found = append(found, u.String())
		}
	}
	switch len(found) {
	case 0:
		return "", "", fmt.Errorf("%w (certificate %q)", ErrNoRole, cert.Subject.CommonName)
	case 1:
	default:
		return "", "", fmt.Errorf("%w: certificate %q has %d role URIs (%s), want exactly one",
			ErrNoRole, cert.Subject.CommonName, len(found), strings.Join(found, ", "))
	}
	rest, ok := strings.CutPrefix(found[0], RoleURIPrefix)
	role, node, hasNode := strings.Cut(rest, "/")
	r := Role(role)
	switch {
	case !ok || !r.valid():
	case !hasNode:
		return r, "", nil
	case r == RoleAgent && ValidNodeID(node) == nil:
		return r, node, nil
	}
	return "", "", fmt.Errorf("%w: certificate %q has unknown role URI %s", ErrNoRole, cert.Subject.CommonName, found[0])
}

// AgentURI is the URI SAN of the agent of node: spiffe://forge/agent/<node>.
func AgentURI(node string) *url.URL {
	u := RoleAgent.URI()
	u.Path += "/" + node
	return u
}

// ValidNodeID checks the shape of a node id as certificates and Join carry
// it: 1 to MaxNodeID letters, digits, '-' or '_' (swarm's ids are 25 lower-case
// letters and digits). That it is a node's full id, not a host name or a
// prefix, only swarm can say (agents.SwarmVerifier).
func ValidNodeID(node string) error {
	if node == "" {
		return errors.New("empty node_id")
	}
	if len(node) > MaxNodeID {
		return fmt.Errorf("node_id is %d characters, max %d", len(node), MaxNodeID)
	}
	for _, c := range node {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("node_id %q has %q: want letters, digits, '-' or '_'", node, c)
		}
	}
	return nil
}

// CA is a certificate authority: the root every forge certificate chains to.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed ECDSA P-256 CA named commonName, valid from
// ClockSkew ago for validFor (DefaultCAValidity when zero). It can sign
// leaf certificates only (path length zero).
func NewCA(commonName string, validFor time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("wire: new CA: empty common name")
	}
	if validFor < 0 {
		return nil, fmt.Errorf("wire: new CA: negative validity %s", validFor)
	}
	if validFor == 0 {
		validFor = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("wire: new CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("wire: new CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// SubjectKeyId is derived by x509.CreateCertificate for CAs.
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("wire: new CA: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("wire: new CA: parse: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA written by CertPEM and KeyPEM. The key must be the
// certificate's and the certificate must be a CA.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("wire: load CA certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("wire: load CA: certificate %q is not a CA", cert.Subject.CommonName)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("wire: load CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("wire: load CA: key does not match certificate %q", cert.Subject.CommonName)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM returns the CA certificate as a PEM "CERTIFICATE" block.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA key as a PKCS#8 PEM "PRIVATE KEY" block.
func (ca *CA) KeyPEM() ([]byte, error) {
	return marshalKeyPEM(ca.Key)
}

// Pool returns a pool holding only this CA, for ServerConfig and
// ClientConfig.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// IssueRequest describes a certificate to issue.
type IssueRequest struct {
	// Role is RoleCoordinator or RoleAgent.
	Role Role
	// Name is the certificate's common name (for agents, typically the
	// node's host name; for the coordinator, its service name).
	Name string
	// Node is the swarm node id an agent certificate speaks for (its URI
	// SAN is AgentURI(Node)); required for agents, empty for the
	// coordinator.
	Node string
	// Hosts are the DNS names and IP addresses the holder is reached at.
	// The agent verifies the coordinator's host name against them, so a
	// coordinator certificate needs at least one; for agents they are
	// optional and only informative.
	Hosts []string
	// ValidFor is the validity period (DefaultLeafValidity when zero). The
	// certificate never outlives the CA: NotAfter is capped at the CA's.
	ValidFor time.Duration
	// NotBefore is the start of validity. Zero means now minus ClockSkew,
	// and then the certificate ends ValidFor from now; otherwise it ends
	// ValidFor after NotBefore.
	NotBefore time.Time
}

// Issue signs a new ECDSA P-256 certificate for req and returns it and its
// key as PEM ("CERTIFICATE", and PKCS#8 "PRIVATE KEY").
//
// Extended key usage follows the role (PROTOCOL.md §2), so a certificate
// used in the wrong place is refused by crypto/tls before the role check.
func (ca *CA) Issue(req IssueRequest) (certPEM, keyPEM []byte, err error) {
	return ca.issue(req, nil)
}

// issue is Issue with the extended key usages overridable, so tests can make
// certificates that pass crypto/tls's key-usage check and reach the role
// check.
func (ca *CA) issue(req IssueRequest, eku []x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	fail := func(format string, args ...any) ([]byte, []byte, error) {
		return nil, nil, fmt.Errorf("wire: issue %s certificate %q: "+format, append([]any{req.Role, req.Name}, args...)...)
	}
	if !req.Role.valid() {
		return fail("unknown role (want %s or %s)", RoleCoordinator, RoleAgent)
	}
	if req.Name == "" {
		return fail("empty name")
	}
	if req.ValidFor < 0 {
		return fail("negative validity %s", req.ValidFor)
	}
	uri := req.Role.URI()
	switch {
	case req.Role == RoleAgent:
		if err := ValidNodeID(req.Node); err != nil {
			return fail("node: %v (an agent certificate names the swarm node it speaks for)", err)
		}
		uri = AgentURI(req.Node)
	case req.Node != "":
		return fail("a %s certificate names no node", req.Role)
	}
	var dns []string
	var ips []net.IP
	for _, h := range req.Hosts {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
			continue
		case net.ParseIP(h) != nil:
			ips = append(ips, net.ParseIP(h))
		default:
			dns = append(dns, h)
		}
	}
	if req.Role == RoleCoordinator && len(dns)+len(ips) == 0 {
		return fail("no hosts: agents verify the coordinator's host name, so its certificate needs at least one DNS name or IP address")
	}
	if eku == nil {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if req.Role == RoleCoordinator {
			eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}
	}
	validFor := req.ValidFor
	if validFor == 0 {
		validFor = DefaultLeafValidity
	}
	notBefore, notAfter := req.NotBefore, req.NotBefore.Add(validFor)
	if notBefore.IsZero() {
		now := time.Now()
		notBefore, notAfter = now.Add(-ClockSkew), now.Add(validFor)
	}
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}

	key, err := NewKey()
	if err != nil {
		return fail("%w", err)
	}
	der, err := ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: req.Name},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		ExtKeyUsage: eku,
		DNSNames:    dns,
		IPAddresses: ips,
		URIs:        []*url.URL{uri},
	}, &key.PublicKey)
	if err != nil {
		return fail("%w", err)
	}
	keyPEM, err = marshalKeyPEM(key)
	if err != nil {
		return fail("%w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// sign signs tmpl (a leaf: digital signature usage, a random serial) for pub.
func (ca *CA) sign(tmpl *x509.Certificate, pub *ecdsa.PublicKey) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return der, nil
}

// NewKey makes an ECDSA P-256 key, the only kind forge certificates carry.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// NewCSR makes the certificate request an agent sends in Join or Renew:
// key's public half, and AgentURI(node) as its only name (PROTOCOL.md §2).
func NewCSR(key *ecdsa.PrivateKey, node string) ([]byte, error) {
	if err := ValidNodeID(node); err != nil {
		return nil, fmt.Errorf("wire: certificate request: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "forge agent " + node},
		URIs:    []*url.URL{AgentURI(node)},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("wire: certificate request: %w", err)
	}
	return der, nil
}

// SignAgent signs an agent's certificate request (Join or Renew) for node,
// valid from ClockSkew ago for validFor and never past the CA: role agent,
// client authentication only, the URI SAN AgentURI(node) and no other
// name, whatever the request asked. The request must be well signed, for
// an ECDSA P-256 key, and name nothing but AgentURI(node), if anything;
// otherwise the error wraps ErrBadCSR and says why. name is the common
// name (the node's host name, for people).
func (ca *CA) SignAgent(csrDER []byte, node, name string, validFor time.Duration) (*x509.Certificate, error) {
	csr, err := CheckCSR(csrDER, node)
	if err != nil {
		return nil, err
	}
	if validFor <= 0 {
		return nil, fmt.Errorf("wire: sign agent certificate: validity %s, want > 0", validFor)
	}
	if name == "" {
		name = node
	}
	now := time.Now()
	notAfter := now.Add(validFor)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	der, err := ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		NotBefore:   now.Add(-ClockSkew),
		NotAfter:    notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{AgentURI(node)},
	}, csr.PublicKey.(*ecdsa.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("wire: sign agent certificate for %s: %w", node, err)
	}
	return x509.ParseCertificate(der)
}

// CheckCSR parses an agent's certificate request and checks it by
// PROTOCOL.md §2: a valid signature, an ECDSA P-256 key, and no names but
// AgentURI(node). Errors wrap ErrBadCSR.
func CheckCSR(csrDER []byte, node string) (*x509.CertificateRequest, error) {
	bad := func(format string, args ...any) (*x509.CertificateRequest, error) {
		return nil, fmt.Errorf("%w: %s", ErrBadCSR, fmt.Sprintf(format, args...))
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return bad("parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return bad("signature: %v", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return bad("key is %s, want ECDSA P-256", keyKind(csr.PublicKey))
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return bad("it asks for %d DNS, IP or e-mail names; an agent certificate carries only %s", n, AgentURI(node))
	}
	switch {
	case len(csr.URIs) == 0:
	case len(csr.URIs) == 1 && csr.URIs[0].String() == AgentURI(node).String():
	default:
		var us []string
		for _, u := range csr.URIs {
			us = append(us, u.String())
		}
		return bad("it asks for %s; this agent may have only %s", strings.Join(us, ", "), AgentURI(node))
	}
	return csr, nil
}

func keyKind(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	default:
		return fmt.Sprintf("%T", k)
	}
}

// CertPEM encodes a certificate as a PEM "CERTIFICATE" block.
func CertPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// KeyPEM encodes a key as a PKCS#8 PEM "PRIVATE KEY" block.
func KeyPEM(key *ecdsa.PrivateKey) ([]byte, error) { return marshalKeyPEM(key) }

// ParseKeyPEM reads an ECDSA key written by KeyPEM (or openssl's "EC
// PRIVATE KEY").
func ParseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) { return parseKeyPEM(data) }

// ParseCertPEM reads the first certificate of a PEM file's contents.
func ParseCertPEM(data []byte) (*x509.Certificate, error) { return parseCertPEM(data) }

// LoadKeyPair reads a certificate and its key from PEM files. Errors name
// the file at fault.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("wire: read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("wire: read key: %w", err)
	}
	if _, err := parseCertPEM(certPEM); err != nil {
		return tls.Certificate{}, fmt.Errorf("wire: certificate %s: %w", certFile, err)
	}
	if !hasKeyBlock(keyPEM) {
		return tls.Certificate{}, fmt.Errorf("wire: key %s: no PEM PRIVATE KEY block", keyFile)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("wire: key pair %s, %s: %w", certFile, keyFile, err)
	}
	return pair, nil
}

// LoadCAPool reads every certificate of a PEM file into a pool. A file
// without certificates is an error that names it.
func LoadCAPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("wire: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("wire: CA %s: certificate %d: %w", caFile, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("wire: CA %s: no PEM CERTIFICATE block", caFile)
	}
	return pool, nil
}

func randomSerial() (*big.Int, error) {
	// 128 random bits: unique without coordination between issuers.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return serial, nil
}

func marshalKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCertPEM returns the first CERTIFICATE block of data.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func hasKeyBlock(data []byte) bool {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return false
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			return true
		}
	}
}

// parseKeyPEM returns the ECDSA key of the first key block of data: PKCS#8
// "PRIVATE KEY" as written here, or SEC 1 "EC PRIVATE KEY" as written by
// `openssl ecparam -genkey`.
func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM PRIVATE KEY block")
		}
		switch block.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			ec, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("key is %T, want ECDSA", k)
			}
			return ec, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(block.Bytes)
		}
	}
}
