package wire

import "crypto/x509"

// What the external tests (package wire_test) need of the package's
// insides.

// IssueEKU is Issue with chosen extended key usages: certificates that
// pass crypto/tls's key-usage check but carry the wrong role.
func (ca *CA) IssueEKU(req IssueRequest, eku []x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	return ca.issue(req, eku)
}

var (
	SampleMessages = sampleMessages
	SameMessage    = sameMessage
)
