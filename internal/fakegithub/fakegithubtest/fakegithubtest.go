// Package fakegithubtest serves a fakegithub.Server for the length of a
// test: on loopback (or a listener of the test's), with the app key the
// tests sign with and the app's OAuth client, a refused request failing
// the test.
package fakegithubtest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/fakegithub"
)

// The app's OAuth client, for signing in with GitHub.
const (
	ClientID     = "Iv1.fakegithubclient"
	ClientSecret = "fakegithub-client-secret"
)

// appKey is made once per test binary: RSA key generation is slow under
// -race.
var appKey = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

// AppKey is the app's private key, the one the fake checks JWTs with.
func AppKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := appKey()
	if err != nil {
		t.Fatalf("fake GitHub: app key: %v", err)
	}
	return k
}

// AppKeyPEM is the app's private key as GitHub issues it (PKCS #1 PEM).
func AppKeyPEM(t testing.TB) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(AppKey(t))})
}

// Server is a fake GitHub serving for a test.
type Server struct {
	*fakegithub.Server
	t   testing.TB
	srv *httptest.Server
}

// New serves a fake GitHub on loopback until the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	return NewListener(t, nil)
}

// NewListener serves a fake GitHub on ln (one in another network
// namespace, say), or on loopback when ln is nil, until the test ends; it
// then closes ln. The app is fakegithub.AppID with AppKey and the OAuth
// client ClientID with ClientSecret, and every request the fake refuses
// fails the test.
func NewListener(t testing.TB, ln net.Listener) *Server {
	t.Helper()
	f := &Server{t: t, Server: fakegithub.New(fakegithub.Options{AppID: fakegithub.AppID, Key: &AppKey(t).PublicKey,
		ClientID: ClientID, ClientSecret: ClientSecret,
		Refuse: func(msg string) { t.Errorf("fake GitHub: %s", msg) }})}
	f.srv = httptest.NewUnstartedServer(f.Server)
	if ln != nil {
		f.srv.Listener.Close()
		f.srv.Listener = ln
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	// Before the server closes (cleanups run last first): a held request
	// would keep Close waiting.
	t.Cleanup(f.Server.Close)
	return f
}

// URL is the server's root, http://HOST:PORT.
func (f *Server) URL() string { return f.srv.URL }

// APIBase is the API base to configure: GitHub Enterprise style,
// http://HOST:PORT/api/v3/.
func (f *Server) APIBase() string { return f.srv.URL + "/api/v3/" }

// WebBase is the web side to configure (GitHub's https://github.com): the
// server's root, http://HOST:PORT, with no slash after it; the OAuth
// pages are under WebBase()+"/login/oauth/".
func (f *Server) WebBase() string { return f.srv.URL }

// Client is an HTTP client that refuses every host but the fake's: a
// request built from a URL in a payload (api.github.com,
// raw.githubusercontent.com) fails the test. So does following the
// sign-in's redirect back to the client: stop at it, or use another.
func (f *Server) Client() *http.Client {
	host := strings.TrimPrefix(f.srv.URL, "http://")
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host != host {
			f.t.Errorf("fake GitHub: request to a host other than the configured API: %s %s", r.Method, r.URL)
			return nil, fmt.Errorf("fake GitHub transport: host %s refused", r.URL.Host)
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (fn roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return fn(r) }

// NextStatus returns the first accepted status that NextStatus has not
// returned yet, waiting for it up to timeout (then it fails the test).
func (f *Server) NextStatus(t testing.TB, timeout time.Duration) fakegithub.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	s, err := f.WaitStatus(ctx)
	if err != nil {
		t.Fatalf("fake GitHub: no commit status within %v: %v", timeout, err)
	}
	return s
}

// Tarball is fakegithub.Tarball, failing the test on an error.
func Tarball(t testing.TB, topFolder string, files map[string]string) []byte {
	t.Helper()
	tgz, err := fakegithub.Tarball(topFolder, files)
	if err != nil {
		t.Fatal(err)
	}
	return tgz
}

// TarballEntries is fakegithub.TarballEntries, failing the test on an
// error.
func TarballEntries(t testing.TB, entries ...fakegithub.Entry) []byte {
	t.Helper()
	tgz, err := fakegithub.TarballEntries(entries...)
	if err != nil {
		t.Fatal(err)
	}
	return tgz
}
