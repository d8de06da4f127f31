// Package dockertest is the harness for tests that run against the real
// Docker Engine of this machine.
//
// It gives a test an API client (negotiating down to the engine's API
// version), makes sure swarm mode is active for as long as any test process
// needs it, builds small local images without a registry, and removes every
// service and container a test created, found by a per-test label, even when
// the test fails.
//
// Outside CI a missing engine skips the test; under CI=true it fails it,
// so a broken machine can never pass by running nothing.
package dockertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// LabelTest marks every object a test creates; its value is unique per test
// so that Cleanup removes exactly what that test made.
const LabelTest = "forge.test"

// CI reports whether the tests run under CI, where a missing engine or a
// missing tool is a failure and never a skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips the test, or fails it under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI=true: tests that need it must run)", msg)
	}
	t.Skip(msg)
}

// Client returns a client of the local engine (DOCKER_HOST and friends are
// honoured), closed when the test ends.
func Client(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		Unavailable(t, "docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		cli.Close()
		Unavailable(t, "docker engine not reachable: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Context returns a context that ends when the test ends or after d.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// ID returns a label value unique to this test run, usable in names.
func ID(t testing.TB) string {
	t.Helper()
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(name) > 30 {
		name = name[:30]
	}
	return fmt.Sprintf("%s-%d-%d", strings.Trim(name, "-"), os.Getpid(), time.Now().UnixNano()%1e9)
}

// Cleanup registers the removal of every service, then every container,
// carrying LabelTest=id. It runs when the test ends, pass or fail.
func Cleanup(t testing.TB, cli client.APIClient, id string) {
	t.Helper()
	t.Cleanup(func() {
		if err := RemoveLabelled(context.Background(), cli, LabelTest+"="+id); err != nil {
			t.Errorf("cleanup %s: %v", id, err)
		}
	})
}

// RemoveLabelled removes services and containers that carry label (k=v),
// and waits until swarm's containers for them are gone too.
func RemoveLabelled(ctx context.Context, cli client.APIClient, label string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	f := filters.NewArgs(filters.Arg("label", label))
	var errs []error
	if info, err := cli.Info(ctx); err == nil && info.Swarm.ControlAvailable {
		svcs, err := cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: f})
		if err != nil {
			errs = append(errs, fmt.Errorf("list services: %w", err))
		}
		for _, s := range svcs {
			if err := cli.ServiceRemove(ctx, s.ID); err != nil && !client.IsErrNotFound(err) {
				errs = append(errs, fmt.Errorf("remove service %s: %w", s.Spec.Name, err))
			}
		}
	}
	// Swarm removes a removed service's containers asynchronously; remove
	// them ourselves as well so the test ends with nothing left behind.
	for {
		cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers: %w", err))
			break
		}
		if len(cs) == 0 {
			break
		}
		for _, c := range cs {
			err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
			if err != nil && !client.IsErrNotFound(err) && !isRemovalInProgress(err) {
				errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID[:12], err))
			}
		}
		if len(errs) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("containers labelled %s still present: %w", label, ctx.Err()))...)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.Join(errs...)
}

// isRemovalInProgress tells whether the engine refused a removal because
// swarm is removing the same container already (a 409 conflict).
func isRemovalInProgress(err error) bool {
	return cerrdefs.IsConflict(err)
}
