// Command fakegithub serves internal/fakegithub for the test of the
// deployed stack (deploy/deploy_engine_test.go), which builds it into a
// FROM scratch image and runs it on the stack's overlay network: the
// deployed coordinator, given --github-api http://fakegithub:8080/api/v3/,
// talks to it as to GitHub Enterprise. It serves the folder -repo as every
// repository at every commit, checks JWTs against -key and -app-id, and
// answers the test under /_fake/.
package main

import (
	"flag"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/forge-ci/forge/internal/fakegithub"
)

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	appID := flag.Int64("app-id", fakegithub.AppID, "the GitHub App's id (iss of its JWTs)")
	keyFile := flag.String("key", "/app-key.pub.pem", "the App's public key (PEM)")
	repo := flag.String("repo", "/repo", "folder served as the repository at every commit")
	flag.Parse()
	pemBytes, err := os.ReadFile(*keyFile)
	if err != nil {
		log.Fatalf("fakegithub: %v", err)
	}
	key, err := fakegithub.ParsePublicKey(pemBytes)
	if err != nil {
		log.Fatalf("fakegithub: %s: %v", *keyFile, err)
	}
	f := fakegithub.New(fakegithub.Options{AppID: *appID, Key: key, Tree: os.DirFS(*repo),
		Refuse: func(msg string) { log.Printf("fakegithub: %s", msg) }, Logf: log.Printf})
	log.Printf("fakegithub: serving %s on %s", *repo, *listen)
	srv := &http.Server{Addr: *listen, Handler: f, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
