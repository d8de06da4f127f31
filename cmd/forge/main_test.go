package main

import (
	"bytes"
	"strings"
	"testing"

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
