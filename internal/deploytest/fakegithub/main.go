// Command fakegithub serves internal/fakegithub for the test of the
// deployed stack (deploy/deploy_engine_test.go), which builds it into a
// FROM scratch image and runs it on the stack's overlay network: the
// deployed coordinator, given --github-api http://fakegithub:8080/api/v3/,
// talks to it as to GitHub Enterprise. It serves the folder -repo as every
// repository at every commit, checks JWTs against -key and -app-id, and
// answers the test under /_fake/. With -oauth-client-id and
// -oauth-client-secret it is the sign-in too (--github-web
// http://fakegithub:8080), offering the -user users with the -permission
// permissions on repositories, public unless -private.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/forge-ci/forge/internal/fakegithub"
)

func main() {
	f, listen, err := setup(os.Args[1:])
	if err != nil {
		log.Fatalf("fakegithub: %v", err)
	}
	log.Printf("fakegithub: serving on %s", listen)
	srv := &http.Server{Addr: listen, Handler: f, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// setup makes the fake that args describe, and the address to serve it
// on.
func setup(args []string) (*fakegithub.Server, string, error) {
	fl := flag.NewFlagSet("fakegithub", flag.ContinueOnError)
	listen := fl.String("listen", ":8080", "address to serve on")
	appID := fl.Int64("app-id", fakegithub.AppID, "the GitHub App's id (iss of its JWTs)")
	keyFile := fl.String("key", "/app-key.pub.pem", "the App's public key (PEM)")
	repo := fl.String("repo", "/repo", "folder served as the repository at every commit")
	clientID := fl.String("oauth-client-id", "", "the App's OAuth client id (none: every sign-in refused)")
	clientSecret := fl.String("oauth-client-secret", "", "the App's OAuth client secret")
	var settings []func(*fakegithub.Server)
	fl.Func("user", "a user to sign in as, login:id (repeatable)", func(v string) error {
		login, idText, _ := strings.Cut(v, ":")
		id, err := strconv.ParseInt(idText, 10, 64)
		if login == "" || err != nil {
			return fmt.Errorf("%q: want login:id", v)
		}
		settings = append(settings, func(f *fakegithub.Server) { f.AddUser(login, id) })
		return nil
	})
	fl.Func("permission", "a user's permission, login:owner/repo:perm (repeatable)", func(v string) error {
		parts := strings.Split(v, ":")
		if len(parts) != 3 {
			return fmt.Errorf("%q: want login:owner/repo:perm", v)
		}
		settings = append(settings, func(f *fakegithub.Server) { f.SetPermission(parts[0], parts[1], parts[2]) })
		return nil
	})
	fl.Func("private", "a private repository, owner/repo (repeatable)", func(v string) error {
		settings = append(settings, func(f *fakegithub.Server) { f.SetPrivate(v, true) })
		return nil
	})
	if err := fl.Parse(args); err != nil {
		return nil, "", err
	}
	pemBytes, err := os.ReadFile(*keyFile)
	if err != nil {
		return nil, "", err
	}
	key, err := fakegithub.ParsePublicKey(pemBytes)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", *keyFile, err)
	}
	f := fakegithub.New(fakegithub.Options{AppID: *appID, Key: key, Tree: os.DirFS(*repo),
		ClientID: *clientID, ClientSecret: *clientSecret,
		Refuse: func(msg string) { log.Printf("fakegithub: %s", msg) }, Logf: log.Printf})
	for _, set := range settings {
		set(f)
	}
	// The fake refuses settings it cannot obey (a permission it does not
	// know, say): a test's mistake, better stopped here.
	if bad := f.Refused(); len(bad) > 0 {
		return nil, "", fmt.Errorf("settings refused: %s", strings.Join(bad, "; "))
	}
	return f, *listen, nil
}
