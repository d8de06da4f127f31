package main

import (
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator/daemon"
)

// boundsOf parses args with the coordinator's own --max-log-size,
// --retain, --max-artifacts-size and --cache-size flags.
func boundsOf(t *testing.T, args ...string) (daemon.Bounds, error) {
	t.Helper()
	var flags []cli.Flag
	for _, f := range coordinatorCommand().Flags {
		if n := f.Names()[0]; n == "max-log-size" || n == "retain" || n == "max-artifacts-size" || n == "cache-size" {
			flags = append(flags, f)
		}
	}
	var got daemon.Bounds
	var err error
	app := &cli.App{Flags: flags, Action: func(c *cli.Context) error { got, err = boundsFlags(c); return nil }}
	if rerr := app.Run(append([]string{"x"}, args...)); rerr != nil {
		t.Fatal(rerr)
	}
	return got, err
}

func TestBoundsFlags(t *testing.T) {
	b, err := boundsOf(t)
	if err != nil || b.MaxLogSize != 64<<20 || b.Retain != 90*24*time.Hour || b.MaxArtifactsSize != 1<<30 || b.CacheSize != 10<<30 {
		t.Fatalf("defaults: %+v %v, want 64 MiB, 90 days, 1 GiB of artifacts and 10 GiB of caches", b, err)
	}
	b, err = boundsOf(t, "--max-artifacts-size", "256m")
	if err != nil || b.MaxArtifactsSize != 256<<20 {
		t.Fatalf("256m: %+v %v", b, err)
	}
	if b, err = boundsOf(t, "--cache-size", "500m"); err != nil || b.CacheSize != 500<<20 {
		t.Fatalf("--cache-size 500m: %+v %v", b, err)
	}
	if b, err = boundsOf(t, "--cache-size", "0"); err != nil || b.CacheSize >= 0 {
		t.Fatalf("--cache-size 0: %+v %v, want caches off (negative)", b, err)
	}
	b, err = boundsOf(t, "--max-log-size", "1GiB", "--retain", "720h")
	if err != nil || b.MaxLogSize != 1<<30 || b.Retain != 720*time.Hour {
		t.Fatalf("1GiB, 720h: %+v %v", b, err)
	}
	b, err = boundsOf(t, "--max-log-size", "0", "--retain", "0")
	if err != nil || b.MaxLogSize != 0 || b.Retain != 0 {
		t.Fatalf("0, 0: %+v %v, want no bounds", b, err)
	}
	for _, bad := range [][]string{
		{"--max-log-size", "lots"}, {"--max-log-size", "-5MiB"},
		{"--retain", "forever"}, {"--retain", "-1h"}, {"--retain", "1.5d"}, {"--retain", "0d"},
		{"--max-artifacts-size", "0"}, {"--max-artifacts-size", "big"}, {"--max-artifacts-size", "-1GiB"},
		{"--cache-size", "huge"}, {"--cache-size", "-1GiB"}, {"--cache-size", ""},
	} {
		if _, err := boundsOf(t, bad...); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: %v, want an error naming %s", bad, err, bad[0])
		}
	}
}
