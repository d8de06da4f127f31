// Command forgexec is Forge's build executor. The agent copies it into a
// build container at /forgexec, writes the build spec at /.forge/build.json
// and starts the container with /forgexec as its command, so it runs as
// PID 1. It takes no arguments; see package
// github.com/forge-ci/forge/forgexec for what it does and its exit codes.
//
// The secrets file the agent puts at /.forge/secrets.json (untrusted
// builds have none) is read and removed before the first command; its
// values reach the commands as environment variables only.
//
// The environment variables FORGEXEC_SPEC and FORGEXEC_SECRETS, when set,
// name another spec and secrets file. They exist for tests that run the
// binary outside a container; the agent never sets them.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/forge-ci/forge/forgexec"
)

func main() {
	path := forgexec.SpecPath
	if p := os.Getenv("FORGEXEC_SPEC"); p != "" {
		path = p
	}
	spec, err := forgexec.LoadSpec(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "forgexec: %v\n", err)
		os.Exit(forgexec.ExitUsage)
	}
	// Read and removed before the first command runs (FORGEXEC_SECRETS
	// names another file, for tests).
	secretsPath := forgexec.SecretsPath
	if p := os.Getenv("FORGEXEC_SECRETS"); p != "" {
		secretsPath = p
	}
	secrets, err := forgexec.TakeSecrets(secretsPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "forgexec: %v\n", err)
		os.Exit(forgexec.ExitInternal)
	}
	r := &forgexec.Runner{Stdout: os.Stdout, Stderr: os.Stderr, Secrets: secrets}
	os.Exit(r.Run(context.Background(), spec))
}
