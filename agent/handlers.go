package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/wire"
)

// handle serves one request stream the coordinator opened, refusing what
// the agent does not serve (PROTOCOL.md §4.3, §6.5).
func (a *Agent) handle(ctx context.Context, s *session, st *wire.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(wire.RequestTimeout))
	c := wire.NewCodec(st)
	msg, err := c.Recv()
	if err != nil {
		a.log.Warn("request stream", "err", err)
		if badFrame(err) {
			c.Send(wire.NewRefused(wire.RefusedBadRequest, "%v", err))
		}
		return
	}
	var reply wire.Message
	switch m := msg.(type) {
	case *wire.Launch:
		a.log.Debug("launch received", "build", m.BuildID, "container", m.ContainerID)
		st.SetDeadline(time.Now().Add(launchTimeout))
		reply = a.launch(ctx, s, c, m)
	case *wire.Cancel:
		a.log.Debug("cancel received", "build", m.BuildID, "container", m.ContainerID)
		st.SetDeadline(time.Now().Add(time.Duration(m.GraceSeconds)*time.Second + cancelExtra))
		reply = a.cancel(ctx, m)
	case *wire.ArtifactsRequest:
		a.log.Debug("artifacts request received", "build", m.BuildID, "container", m.ContainerID)
		st.SetDeadline(time.Now().Add(wire.ArtifactsTimeout(m.MaxBytes)))
		reply = a.artifacts(ctx, c, m)
	default:
		reply = wire.NewRefused(wire.RefusedBadRequest, "the agent does not serve %q requests", msg.MessageType())
	}
	if reply == nil {
		return // the conversation is over (artifacts sent)
	}
	if r, ok := reply.(*wire.Refused); ok {
		a.log.Warn("request refused", "type", msg.MessageType(), "code", r.Code, "message", r.Message)
	}
	if err := c.Send(reply); err != nil {
		a.log.Warn("reply", "type", reply.MessageType(), "err", err)
	}
}

// badFrame tells a frame the agent read whole but cannot serve: the
// stream still works, so a Refused can say why (PROTOCOL.md §4.3).
func badFrame(err error) bool {
	for _, e := range []error{wire.ErrMalformed, wire.ErrUnknownType, wire.ErrInvalidMessage, wire.ErrEmptyFrame} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// refusal maps an error of the node's Docker or of the checks to a Refused
// (PROTOCOL.md §5.3).
func refusal(err error) *wire.Refused {
	code := wire.RefusedInternal
	switch {
	case errdefs.IsNotFound(err):
		code = wire.RefusedNotFound
	case errors.Is(err, ErrNotForge), errors.Is(err, ErrWrongBuild), errors.Is(err, ErrAlreadyRan), errors.Is(err, ErrNotStopped):
		code = wire.RefusedForbidden
	case errors.Is(err, ErrUnsafePath), errors.Is(err, wire.ErrUnsafeEntry), errors.Is(err, ErrUnknownUser):
		code = wire.RefusedBadRequest // the source, cache or image, not this node, is at fault
	}
	return wire.NewRefused(code, "%v", err)
}

// launch serves a Launch (PROTOCOL.md §6.2) and hands a started build to
// the session loop for its log stream.
func (a *Agent) launch(ctx context.Context, s *session, c *wire.Codec, m *wire.Launch) wire.Message {
	if !s.claim(m.ContainerID) {
		return wire.NewRefused(wire.RefusedBusy, "a launch into container %s is in progress", m.ContainerID)
	}
	var started *heldBuild
	defer func() { s.events <- launched{containerID: m.ContainerID, build: started} }()

	wctx, cancel := context.WithTimeout(ctx, launchableWait)
	err := WaitLaunchable(wctx, a.cfg.Docker, m.ContainerID, m.BuildID)
	cancel()
	if err != nil {
		return refusal(err)
	}
	exe, have := a.exec.get(m.Executor.Digest)
	if err := c.Send(&wire.LaunchReady{NeedExecutor: !have}); err != nil {
		return wire.NewRefused(wire.RefusedInternal, "send launch_ready: %v", err)
	}
	if !have {
		var buf bytes.Buffer
		if err := wire.RecvBlobVerified(c.Stream(), m.Executor, &buf); err != nil {
			return wire.NewRefused(wire.RefusedBadRequest, "executor: %v", err)
		}
		exe = buf.Bytes()
		a.exec.put(m.Executor.Digest, exe)
	}
	p := Payload{
		Executor: bytes.NewReader(exe), ExecutorSize: int64(len(exe)),
		Spec: m.Spec, Workdir: m.Workdir,
	}
	if len(m.Secrets) > 0 {
		// Only into the archive (PROTOCOL.md §6.2); the Launch, and with
		// it the values, are dropped once it returns.
		ss := make(map[string][]byte, len(m.Secrets))
		for _, s := range m.Secrets {
			ss[s.Name] = s.Value
		}
		if p.Secrets, err = forgexec.EncodeSecrets(ss); err != nil {
			return wire.NewRefused(wire.RefusedBadRequest, "secrets: %v", err)
		}
	}
	// The cache's bytes come before the source's (PROTOCOL.md §6.2).
	var cache, src *io.LimitedReader
	if m.Cache != nil && m.Cache.Size > 0 {
		cache = &io.LimitedReader{R: c.Stream(), N: m.Cache.Size}
		p.Cache, p.CachePaths = cache, m.Cache.Paths
	}
	if m.SourceSize > 0 {
		src = &io.LimitedReader{R: c.Stream(), N: m.SourceSize}
		p.Source = src
	}
	err = Inject(ctx, a.cfg.Docker, m.ContainerID, m.BuildID, p)
	for _, r := range []*io.LimitedReader{cache, src} {
		if r != nil && r.N > 0 {
			// Read what the coordinator announced, so it sees the Refused
			// rather than a broken write (PROTOCOL.md §4.2).
			if _, derr := io.Copy(io.Discard, r); derr == nil && err == nil {
				err = errors.New("bytes left after the end of a tar")
			}
		}
	}
	if err != nil {
		return refusal(err)
	}
	if m.Cache != nil && m.Cache.Save {
		a.saves.put(m.BuildID, cacheSave{containerID: m.ContainerID, paths: m.Cache.Paths, maxBytes: m.Cache.MaxBytes})
	}
	// The loop starts the build's log pump, unless the session is ending;
	// the next session then reports the build as held (PROTOCOL.md §5.4).
	started = &heldBuild{buildID: m.BuildID, containerID: m.ContainerID}
	startedAt := time.Now()
	if in, err := a.cfg.Docker.ContainerInspect(ctx, m.ContainerID); err == nil && in.State != nil {
		if t, err := time.Parse(time.RFC3339Nano, in.State.StartedAt); err == nil {
			startedAt = t
		}
	}
	a.log.Info("build started", "build", m.BuildID, "container", m.ContainerID)
	return &wire.Started{ContainerID: m.ContainerID, StartedAt: startedAt}
}

// cancel stops a forge container with the engine's stop, which sends both
// signals of PROTOCOL.md §6.3. The executor, as PID 1, passes SIGTERM on
// to the build's commands.
func (a *Agent) cancel(ctx context.Context, m *wire.Cancel) wire.Message {
	in, err := a.cfg.Docker.ContainerInspect(ctx, m.ContainerID)
	if err != nil {
		return refusal(err)
	}
	if err := checkBuild(in, m.BuildID, "cancel"); err != nil {
		return refusal(err)
	}
	grace := max(m.GraceSeconds, 0)
	if err := a.cfg.Docker.ContainerStop(ctx, m.ContainerID, container.StopOptions{Timeout: &grace}); err != nil {
		return refusal(fmt.Errorf("stop container %s: %w", m.ContainerID, err))
	}
	in, err = a.cfg.Docker.ContainerInspect(ctx, m.ContainerID)
	if err != nil {
		return refusal(err)
	}
	out := &wire.Cancelled{}
	if in.State.StartedAt != "" && in.State.StartedAt != neverStarted {
		code := in.State.ExitCode
		out.ExitCode = &code
	}
	a.log.Info("build cancelled", "build", m.BuildID, "container", m.ContainerID)
	return out
}

// execCache keeps the executors the agent received, by digest, so their
// bytes cross the wire once per node and version. Two are kept: the
// current one and the previous one during an upgrade.
type execCache struct {
	mu    sync.Mutex
	order []string
	bins  map[string][]byte
}

const execCacheSize = 2

func (e *execCache) get(digest string) ([]byte, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	b, ok := e.bins[digest]
	return b, ok
}

func (e *execCache) put(digest string, b []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.bins == nil {
		e.bins = map[string][]byte{}
	}
	if _, ok := e.bins[digest]; ok {
		return
	}
	e.bins[digest] = b
	e.order = append(e.order, digest)
	for len(e.order) > execCacheSize {
		delete(e.bins, e.order[0])
		e.order = e.order[1:]
	}
}

func containerListAll(label string) container.ListOptions {
	return container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label))}
}
