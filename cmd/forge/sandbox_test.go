package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator/plan"
)

// sandboxOf runs `forge coordinator args` with an action that only reads
// the sandbox flags.
func sandboxOf(t *testing.T, args ...string) (plan.Sandbox, error) {
	t.Helper()
	cmd := coordinatorCommand()
	var s plan.Sandbox
	var ferr error
	cmd.Action = func(c *cli.Context) error {
		s, ferr = sandboxFlags(c)
		return nil
	}
	app := &cli.App{Name: "forge", Commands: []*cli.Command{cmd}, Writer: io.Discard, ErrWriter: io.Discard}
	if err := app.Run(append([]string{"forge", "coordinator", "--tls-ca", "ca", "--tls-cert", "c", "--tls-key", "k"}, args...)); err != nil {
		t.Fatal(err)
	}
	return s, ferr
}

func TestSandboxFlagDefaults(t *testing.T) {
	s, err := sandboxOf(t)
	if err != nil {
		t.Fatal(err)
	}
	if s != plan.DefaultSandbox() {
		t.Errorf("defaults %+v, want %+v", s, plan.DefaultSandbox())
	}
	s, err = sandboxOf(t, "--build-memory", "1.5g", "--build-cpus", "0.5", "--build-pids", "64",
		"--build-max-memory", "16GiB", "--build-max-cpus", "8", "--build-max-timeout", "3h", "--builds-on-managers")
	if err != nil {
		t.Fatal(err)
	}
	want := plan.DefaultSandbox()
	want.Memory, want.NanoCPUs, want.Pids = 1536<<20, 5e8, 64
	want.MaxMemory, want.MaxNanoCPUs, want.MaxTimeout, want.BuildsOnManagers = 16<<30, 8e9, 3*time.Hour, true
	if s != want {
		t.Errorf("got %+v\nwant %+v", s, want)
	}
}

func TestSandboxFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--build-memory", "lots"}, "--build-memory: "},
		{[]string{"--build-max-memory", "1k"}, "--build-max-memory: "},
		{[]string{"--build-cpus", "two"}, "--build-cpus: "},
		{[]string{"--build-max-cpus", "0"}, "--build-max-cpus: "},
		{[]string{"--build-memory", "16GiB"}, "--build-memory 16GiB is above --build-max-memory 8GiB"},
		{[]string{"--build-cpus", "6"}, "--build-cpus 6 is above --build-max-cpus 4"},
		{[]string{"--build-pids", "0"}, "--build-pids 0: must be at least 1"},
		{[]string{"--build-max-timeout", "30m"}, "--build-max-timeout 30m0s: must be from 1h0m0s"},
		{[]string{"--build-max-timeout", "48h"}, "--build-max-timeout 48h0m0s"},
	} {
		_, err := sandboxOf(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		}
	}
	// The real command stops at the bad flag, before reading anything else.
	if _, err := run(t, "coordinator", "--tls-ca", "ca", "--tls-cert", "c", "--tls-key", "k", "--build-memory", "64 parsecs"); err == nil || !strings.Contains(err.Error(), "--build-memory") {
		t.Errorf("forge coordinator --build-memory '64 parsecs': %v", err)
	}
}
