package wire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// testPKI is a CA with a coordinator certificate valid for 127.0.0.1 and
// localhost, and an agent certificate.
type testPKI struct {
	ca          *CA
	pool        *x509.CertPool
	coordinator tls.Certificate
	agent       tls.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := NewCA("forge test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{ca: ca, pool: ca.Pool()}
	p.coordinator = p.issue(t, IssueRequest{Role: RoleCoordinator, Name: "coordinator", Hosts: []string{"127.0.0.1", "localhost"}})
	p.agent = p.issue(t, IssueRequest{Role: RoleAgent, Name: "node-1"})
	return p
}

func (p *testPKI) issue(t testing.TB, req IssueRequest) tls.Certificate {
	t.Helper()
	return p.issueEKU(t, req, nil)
}

// issueEKU issues with chosen extended key usages, to make certificates
// that pass crypto/tls's key-usage check but carry the wrong role.
func (p *testPKI) issueEKU(t testing.TB, req IssueRequest, eku []x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := p.ca.issue(req, eku)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// tcpPair returns the two ends of a TCP connection on 127.0.0.1.
func tcpPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() { // owner: this function, which waits for it below
		c, err := ln.Accept()
		accepted <- result{c, err}
	}()
	client, err = net.DialTimeout("tcp", ln.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-accepted:
	case <-time.After(testTimeout):
		ln.Close()
		r = <-accepted
	}
	if r.err != nil {
		client.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// runBoth runs the two sides of an exchange in goroutines and waits for
// both within testTimeout; on time-out it calls abort (which must unblock
// them, typically by closing connections) and still waits, so no goroutine
// outlives the test.
func runBoth(t testing.TB, abort func(), sides ...func() error) []error {
	t.Helper()
	errs := make([]error, len(sides))
	done := make(chan int, len(sides))
	for i, side := range sides {
		go func() { // owner: runBoth, which waits for every side
			errs[i] = side()
			done <- i
		}()
	}
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for received := 0; received < len(sides); received++ {
		select {
		case <-done:
		case <-timer.C:
			abort()
			t.Errorf("exchange did not finish within %s", testTimeout)
			for ; received < len(sides); received++ {
				<-done
			}
			return append(errs, errors.New("timed out"))
		}
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
