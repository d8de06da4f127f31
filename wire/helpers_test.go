package wire_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	. "github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// testTimeout bounds every wait in these tests.
const testTimeout = wiretest.Timeout

// issueEKU issues with chosen extended key usages, to make certificates
// that pass crypto/tls's key-usage check but carry the wrong role.
func issueEKU(t testing.TB, p *wiretest.PKI, req IssueRequest, eku []x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := p.CA.IssueEKU(req, eku)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// runBoth is wiretest.Both that fails the test when the sides time out.
func runBoth(t testing.TB, abort func(), sides ...func() error) []error {
	t.Helper()
	errs := wiretest.Both(abort, sides...)
	if len(errs) > len(sides) {
		t.Errorf("exchange did not finish: %v", errs[len(sides)])
	}
	return errs
}

// waitClosed waits for ch to be closed within d.
func waitClosed(t testing.TB, ch <-chan struct{}, d time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ch:
		return time.Since(start)
	case <-time.After(d):
		t.Fatalf("%s: not closed within %s", what, d)
		return 0
	}
}
