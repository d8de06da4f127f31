package fakedocker

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/forge-ci/forge/wire"
)

// TestNodeLifecycle: a build container is created (with its event),
// listed, started, writes output that a following log read demultiplexes
// as the engine's does, and the read ends when the container exits.
func TestNodeLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	n := NewNode("n1")
	d := n.Docker()
	msgs, _ := d.Events(ctx, events.ListOptions{})
	id := n.Create("b1")
	n.Create("") // not a build container: no event, not listed
	select {
	case m := <-msgs:
		if m.Actor.ID != id || m.Actor.Attributes[wire.LabelBuild] != "b1" {
			t.Errorf("event %+v, want the create of %s", m, id)
		}
	case <-ctx.Done():
		t.Fatal("no create event")
	}
	list, err := d.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", wire.LabelBuild))})
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("list %+v, %v; want %s alone", list, err, id)
	}
	in, err := d.ContainerInspect(ctx, id)
	if err != nil || in.State.Status != StatusCreated || in.State.StartedAt != NeverStarted || in.State.Error == "" {
		t.Fatalf("inspect %+v, %v; want created, never started, its start failed", in.State, err)
	}

	if err := d.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	n.Output(id, wire.StreamStdout, "out 1\n")
	rc, err := d.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := stdcopy.StdCopy(&stdout, &stderr, rc); done <- err }()
	n.Output(id, wire.StreamStderr, "err 1\n")
	n.Output(id, wire.StreamStdout, "out 2\n")
	n.Exit(id, 4)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if stdout.String() != "out 1\nout 2\n" || stderr.String() != "err 1\n" {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	in, _ = d.ContainerInspect(ctx, id)
	if in.State.Running || in.State.ExitCode != 4 || in.State.FinishedAt == NeverStarted {
		t.Errorf("after exit: %+v", in.State)
	}
	if c, _ := n.Container(id); len(c.Calls) != 1 || c.Calls[0] != CallStart {
		t.Errorf("calls %v, want the start alone", c.Calls)
	}

	n.Remove(id)
	if _, err := d.ContainerInspect(ctx, id); !errdefs.IsNotFound(err) {
		t.Errorf("inspect of a removed container: %v, want not found", err)
	}
}

// TestLogsEndWithContext: a following log read of a running container
// ends when its context does, or when it is closed.
func TestLogsEndWithContext(t *testing.T) {
	n := NewNode("n1")
	id := n.Create("b1")
	if err := n.Start(id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	rc, err := n.Docker().ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); err == nil {
		t.Error("the read went on after its context ended")
	}
	rc, _ = n.Docker().ContainerLogs(t.Context(), id, container.LogsOptions{ShowStdout: true, Follow: true})
	rc.Close()
	if _, err := io.ReadAll(rc); err == nil {
		t.Error("the read went on after Close")
	}
}

func TestNotFaked(t *testing.T) {
	var d Docker
	if _, err := d.Info(t.Context()); err == nil {
		t.Error("a nil InfoFn answered")
	}
}
