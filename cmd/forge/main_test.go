package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/internal/version"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"forge"}, args...))
	return out.String(), err
}

func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "forge "+version.Version+" ") {
		t.Errorf("version printed %q", out)
	}
}

// afterTests run once every test has: the cluster tests (build tag
// cluster) tear down their shared cluster there.
var afterTests []func() error

func TestMain(m *testing.M) {
	code := dockertest.Main(m)
	for _, f := range afterTests {
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = max(code, 1)
		}
	}
	os.Exit(code)
}
