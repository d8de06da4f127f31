package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/forge-ci/forge/wire"
)

// pump runs one log stream of b (PROTOCOL.md §6.4), resuming in the
// engine's log of the container, the agent's only copy of the output.
// done is true when the coordinator has finished with the build.
func (a *Agent) pump(ctx context.Context, s *session, b heldBuild) (done bool, err error) {
	st, err := s.ws.Open(ctx)
	if err != nil {
		return false, fmt.Errorf("open log stream: %w", err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := wire.NewCodec(st)

	st.SetDeadline(time.Now().Add(attachTimeout))
	if err := c.Send(&wire.Attach{BuildID: b.buildID, ContainerID: b.containerID}); err != nil {
		return false, err
	}
	at, err := wire.Expect[*wire.Attached](c)
	if err != nil {
		var r *wire.RefusedError
		switch {
		case errors.As(err, &r) && r.Code == wire.RefusedNotFound:
			// The coordinator does not track the build (PROTOCOL.md §5.11).
			a.log.Info("coordinator does not know the build; forgetting it", "build", b.buildID)
			return true, nil
		case errors.As(err, &r) && r.Code == wire.RefusedForbidden:
			// Not this node's to report (PROTOCOL.md §6.4): asking again
			// cannot change that.
			a.log.Error("coordinator refused this node the build's log; forgetting the build", "build", b.buildID, "message", r.Message)
			return true, nil
		}
		return false, fmt.Errorf("attach: %w", err)
	}
	st.SetDeadline(time.Time{})
	if at.Done {
		return true, nil
	}
	if at.Cache != nil {
		// The launch asked for the cache: this agent may have restarted
		// since, and forgotten (PROTOCOL.md §6.8).
		a.saves.putNew(b.buildID, cacheSave{containerID: b.containerID, paths: at.Cache.Paths, maxBytes: at.Cache.MaxBytes})
	}

	// LogAcks arrive while output is sent (PROTOCOL.md §6.4): a reader of
	// its own collects them. It is stopped through the read deadline and
	// waited for before the stream is closed.
	exitAck := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			m, err := c.Recv()
			if err != nil {
				// The coordinator ended the stream (it replaced it, or
				// refused a frame): stop sending, even mid-write.
				exitAck <- err
				cancel()
				st.SetWriteDeadline(time.Now())
				return
			}
			if _, ok := m.(*wire.ExitAck); ok {
				exitAck <- nil
				return
			}
		}
	}()
	defer func() {
		st.SetReadDeadline(time.Now())
		<-readerDone
	}()

	w := &logSender{c: c, seq: max(at.NextSeq, 1) - 1, have: map[string]int64{wire.StreamStdout: at.StdoutOffset, wire.StreamStderr: at.StderrOffset}}
	exit, err := a.follow(ctx, b.containerID, w)
	if err != nil {
		if ctx.Err() != nil {
			return false, err
		}
		if !errdefs.IsNotFound(err) {
			return false, err // the stream or the engine failed: attach again
		}
		exit = wire.Exit{ExitCode: -1, Error: "the build's container was removed before it finished"}
	}
	if save, ok := a.saves.take(b.buildID); ok && exit.ExitCode == 0 && exit.Error == "" {
		// Before the exit, so the build's log has the cache's notes when
		// its exit is recorded (PROTOCOL.md §6.8).
		if err := a.saveCache(ctx, s, b, save); err != nil {
			a.saves.put(b.buildID, save) // the next session tries again
			return false, err
		}
	}
	exit.LastSeq = w.seq
	st.SetDeadline(time.Now().Add(exitAckTimeout))
	if err := c.Send(&exit); err != nil {
		return false, err
	}
	select {
	case err := <-exitAck:
		if err != nil {
			return false, fmt.Errorf("wait for exit_ack: %w", err)
		}
	case <-ctx.Done():
		return false, ctx.Err()
	}
	a.log.Info("build reported", "build", b.buildID, "exit_code", exit.ExitCode, "last_seq", exit.LastSeq)
	return true, nil
}

// follow sends the container's output from the engine's log until the
// container has exited, and returns its exit.
func (a *Agent) follow(ctx context.Context, id string, w *logSender) (wire.Exit, error) {
	for {
		rc, err := a.cfg.Docker.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
		if err != nil {
			return wire.Exit{}, fmt.Errorf("logs of %s: %w", id, err)
		}
		w.rewind()
		_, err = stdcopy.StdCopy(w.stream(wire.StreamStdout), w.stream(wire.StreamStderr), rc)
		rc.Close()
		if w.err != nil {
			return wire.Exit{}, w.err
		}
		if err != nil && ctx.Err() != nil {
			return wire.Exit{}, ctx.Err()
		}
		// The log ends when the container stops, or when the engine drops
		// the stream; only the container's state tells which.
		in, ierr := a.cfg.Docker.ContainerInspect(ctx, id)
		if ierr != nil {
			return wire.Exit{}, ierr
		}
		if !in.State.Running {
			fin, _ := time.Parse(time.RFC3339Nano, in.State.FinishedAt)
			return wire.Exit{ExitCode: in.State.ExitCode, FinishedAt: fin}, nil
		}
		a.log.Warn("container log ended while it runs; following again", "container", id, "err", err)
		select {
		case <-ctx.Done():
			return wire.Exit{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logSender turns the engine's demultiplexed output into Log frames. It
// counts each stream's bytes from the start of the container's log, and
// sends only what lies past what the coordinator has (have, PROTOCOL.md
// §6.4).
type logSender struct {
	c    *wire.Codec
	seq  uint64
	have map[string]int64 // what the coordinator has, per stream
	pos  map[string]int64 // where this read of the engine's log is, per stream
	err  error
}

func (w *logSender) rewind() { w.pos = map[string]int64{} }

func (w *logSender) stream(name string) streamWriter { return streamWriter{w, name} }

type streamWriter struct {
	w    *logSender
	name string
}

func (s streamWriter) Write(p []byte) (int, error) {
	n := len(p)
	if err := s.w.send(s.name, p); err != nil {
		s.w.err = err
		return 0, err
	}
	return n, nil
}

func (w *logSender) send(stream string, p []byte) error {
	pos := w.pos[stream]
	end := pos + int64(len(p))
	if have := w.have[stream]; have > pos {
		if have >= end {
			w.pos[stream] = end
			return nil // the coordinator has all of it
		}
		p, pos = p[have-pos:], have
	}
	for len(p) > 0 {
		n := min(len(p), wire.MaxLogChunk)
		w.seq++
		if err := w.c.Send(&wire.Log{Seq: w.seq, Stream: stream, Offset: pos, Data: p[:n]}); err != nil {
			return err
		}
		pos += int64(n)
		p = p[n:]
	}
	w.pos[stream] = pos
	w.have[stream] = pos
	return nil
}
