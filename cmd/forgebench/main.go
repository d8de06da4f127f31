// Command forgebench prints the results of `make bench` as a table: the
// machine they were measured on, every key with its value, and whether
// the targets of the issue hold.
//
//	go run ./cmd/forgebench [bench-results.json]
package main

import (
	"fmt"
	"os"

	"github.com/forge-ci/forge/internal/bench"
)

func main() {
	path := "bench-results.json"
	switch len(os.Args) {
	case 1:
	case 2:
		path = os.Args[1]
	default:
		fmt.Fprintln(os.Stderr, "usage: forgebench [bench-results.json]")
		os.Exit(2)
	}
	r, err := bench.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "forgebench:", err)
		os.Exit(1)
	}
	bench.Table(os.Stdout, r)
}
