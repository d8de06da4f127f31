// Command forgexec is Forge's build executor. The agent copies it into a
// build container at /forgexec, writes the build spec at /.forge/build.json
// and starts the container with /forgexec as its command, so it runs as
// PID 1. It takes no arguments; see package
// github.com/forge-ci/forge/forgexec for what it does and its exit codes.
//
// The environment variable FORGEXEC_SPEC, when set, names another spec file.
// It exists for tests that run the binary outside a container; the agent
// never sets it.
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
	r := &forgexec.Runner{Stdout: os.Stdout, Stderr: os.Stderr}
	os.Exit(r.Run(context.Background(), spec))
}
