package fakedocker

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/wire"
)

// Container states, as the engine names them.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusExited  = "exited"
)

// Calls of the agent that change a container, as Container.Calls lists
// them.
const (
	CallCopy  = "copy"
	CallStart = "start"
	CallStop  = "stop"
)

// StopExitCode is the exit code of a container stopped by ContainerStop:
// 128 + SIGTERM, what the executor exits with when stopped.
const StopExitCode = 143

// Node is one swarm node's engine with build containers, safe for
// concurrent use. The test plays swarm and the build (Create, Start,
// Output, Exit, Remove); the agent sees the result through Docker.
type Node struct {
	id string

	mu         sync.Mutex
	containers map[string]*ctr
	seq        int
	subs       map[chan events.Message]bool
	changed    chan struct{} // closed and replaced on every change
}

type ctr struct {
	Container
	labels            map[string]string
	started, finished time.Time
	output            []chunk
}

type chunk struct {
	stream string
	data   []byte
}

// Container is what a test can learn of a container.
type Container struct {
	ID, BuildID string
	Status      string // StatusCreated, StatusRunning or StatusExited
	ExitCode    int
	// Archives are the tar streams CopyToContainer put in, in order.
	Archives [][]byte
	// Calls are the agent's calls that changed the container (CallCopy,
	// CallStart, CallStop), in order.
	Calls []string
	// StopTimeout is the grace period of the last ContainerStop.
	StopTimeout *int
}

// NewNode returns a node with the swarm node id id and no containers.
func NewNode(id string) *Node {
	return &Node{id: id, containers: map[string]*ctr{}, subs: map[chan events.Message]bool{}, changed: make(chan struct{})}
}

// notify wakes every waiter on a change; n.mu is held.
func (n *Node) notify() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// Create makes a container as swarm leaves a build task's container: it
// carries forge.build=buildID (no forge label when buildID is empty), and
// swarm's start of it has failed. It sends the create event, and returns
// the container's id.
func (n *Node) Create(buildID string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seq++
	id := fmt.Sprintf("c%d-%s", n.seq, buildID)
	labels := map[string]string{}
	if buildID != "" {
		labels[wire.LabelBuild] = buildID
	}
	n.containers[id] = &ctr{Container: Container{ID: id, BuildID: buildID, Status: StatusCreated, ExitCode: 127}, labels: labels}
	if buildID != "" {
		m := events.Message{Type: events.ContainerEventType, Action: events.ActionCreate,
			Actor: events.Actor{ID: id, Attributes: map[string]string{wire.LabelBuild: buildID}}, TimeNano: time.Now().UnixNano()}
		for sub := range n.subs {
			select {
			case sub <- m:
			default: // a subscriber that does not keep up misses it, as with the engine
			}
		}
	}
	n.notify()
	return id
}

// Start starts a created container, as the agent's ContainerStart does;
// tests use it for builds an agent started before it restarted.
func (n *Node) Start(id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.start(id)
}

func (n *Node) start(id string) error {
	c, err := n.get(id)
	if err != nil {
		return err
	}
	if c.Status != StatusCreated {
		return fmt.Errorf("fakedocker: container %s is %s, not created", id, c.Status)
	}
	c.Status, c.ExitCode, c.started = StatusRunning, 0, time.Now()
	n.notify()
	return nil
}

// Output appends data to a running container's stream (wire.StreamStdout
// or wire.StreamStderr).
func (n *Node) Output(id, stream, data string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.containers[id]; c != nil && c.Status == StatusRunning {
		c.output = append(c.output, chunk{stream, []byte(data)})
		n.notify()
	}
}

// Exit ends a running container with code.
func (n *Node) Exit(id string, code int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.exit(id, code)
}

func (n *Node) exit(id string, code int) {
	if c := n.containers[id]; c != nil && c.Status == StatusRunning {
		c.Status, c.ExitCode, c.finished = StatusExited, code, time.Now()
		n.notify()
	}
}

// Remove removes a container.
func (n *Node) Remove(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.containers, id)
	n.notify()
}

// Container returns what is known of container id.
func (n *Node) Container(id string) (Container, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.containers[id]
	if c == nil {
		return Container{}, false
	}
	out := c.Container
	out.Archives = slices.Clone(c.Archives)
	out.Calls = slices.Clone(c.Calls)
	return out, true
}

// Files returns the regular files of an archive put into a container, by
// path, as the tar names them.
func Files(archive []byte) (map[string][]byte, error) {
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("fakedocker: read archive: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("fakedocker: read %s: %w", h.Name, err)
			}
			files[h.Name] = b
		}
	}
}

// get returns container id or the engine's not-found error; n.mu is held.
func (n *Node) get(id string) (*ctr, error) {
	if c := n.containers[id]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no such container: %s: %w", id, errdefs.ErrNotFound)
}

func engineTime(t time.Time) string {
	if t.IsZero() {
		return NeverStarted
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (n *Node) inspect(id string) (container.InspectResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.get(id)
	if err != nil {
		return container.InspectResponse{}, err
	}
	st := &container.State{
		Status: c.Status, Running: c.Status == StatusRunning, ExitCode: c.ExitCode,
		StartedAt: engineTime(c.started), FinishedAt: engineTime(c.finished),
	}
	if c.Status == StatusCreated {
		st.Error = StartFailed
	}
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: id, State: st},
		Config:            &container.Config{Labels: maps.Clone(c.labels)},
	}, nil
}

// list returns the containers that carry every label the "label" filters
// of opts name (key or key=value), stopped ones included.
func (n *Node) list(opts container.ListOptions) []container.Summary {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []container.Summary
	for _, c := range n.containers {
		if !matches(c.labels, opts.Filters.Get("label")) {
			continue
		}
		out = append(out, container.Summary{ID: c.ID, Labels: maps.Clone(c.labels), State: container.ContainerState(c.Status)})
	}
	slices.SortFunc(out, func(a, b container.Summary) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func matches(labels map[string]string, filters []string) bool {
	for _, f := range filters {
		k, v, hasValue := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || hasValue && got != v {
			return false
		}
	}
	return true
}

// subscribe returns a channel of the create events of build containers
// until ctx ends; the error channel then gives ctx's error.
func (n *Node) subscribe(ctx context.Context) (<-chan events.Message, <-chan error) {
	msgs, errs := make(chan events.Message, 64), make(chan error, 1)
	n.mu.Lock()
	n.subs[msgs] = true
	n.mu.Unlock()
	go func() { // owner: the caller's ctx
		<-ctx.Done()
		n.mu.Lock()
		delete(n.subs, msgs)
		n.mu.Unlock()
		errs <- ctx.Err()
	}()
	return msgs, errs
}

func (n *Node) copyTo(id string, content io.Reader) error {
	b, err := io.ReadAll(content)
	if err != nil {
		return fmt.Errorf("fakedocker: read archive for %s: %w", id, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.get(id)
	if err != nil {
		return err
	}
	c.Archives = append(c.Archives, b)
	c.Calls = append(c.Calls, CallCopy)
	return nil
}

func (n *Node) startCall(id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.containers[id]; c != nil {
		c.Calls = append(c.Calls, CallStart)
	}
	return n.start(id)
}

func (n *Node) stop(id string, opts container.StopOptions) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.get(id)
	if err != nil {
		return err
	}
	c.Calls = append(c.Calls, CallStop)
	c.StopTimeout = opts.Timeout
	n.exit(id, StopExitCode)
	return nil
}

// wait sends the container's exit code once it is not running.
func (n *Node) wait(ctx context.Context, id string) (<-chan container.WaitResponse, <-chan error) {
	res, errs := make(chan container.WaitResponse, 1), make(chan error, 1)
	go func() { // owner: the caller's ctx, or the container's exit
		for {
			n.mu.Lock()
			c, err := n.get(id)
			changed := n.changed
			n.mu.Unlock()
			switch {
			case err != nil:
				errs <- err
				return
			case c.Status != StatusRunning:
				res <- container.WaitResponse{StatusCode: int64(c.ExitCode)}
				return
			}
			select {
			case <-changed:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
	}()
	return res, errs
}

// Docker returns the node's engine API. Its functions may be replaced one
// by one, for example to make a call fail.
func (n *Node) Docker() *Docker {
	return &Docker{
		InfoFn: func(ctx context.Context) (system.Info, error) {
			return system.Info{Name: "fake-" + n.id, ServerVersion: "fake",
				Swarm: swarm.Info{NodeID: n.id, LocalNodeState: swarm.LocalNodeStateActive}}, nil
		},
		EventsFn: func(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
			return n.subscribe(ctx)
		},
		ContainerListFn: func(ctx context.Context, opts container.ListOptions) ([]container.Summary, error) {
			return n.list(opts), nil
		},
		ContainerInspectFn: func(ctx context.Context, id string) (container.InspectResponse, error) {
			return n.inspect(id)
		},
		CopyToContainerFn: func(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error {
			return n.copyTo(id, content)
		},
		CopyFromContainerFn: func(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error) {
			return nil, container.PathStat{}, fmt.Errorf("fakedocker: no artifacts in %s", id)
		},
		ContainerStartFn: func(ctx context.Context, id string, opts container.StartOptions) error {
			return n.startCall(id)
		},
		ContainerStopFn: func(ctx context.Context, id string, opts container.StopOptions) error {
			return n.stop(id, opts)
		},
		ContainerWaitFn: func(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
			return n.wait(ctx, id)
		},
		ContainerLogsFn: func(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error) {
			n.mu.Lock()
			_, err := n.get(id)
			n.mu.Unlock()
			if err != nil {
				return nil, err
			}
			return &logReader{n: n, id: id, ctx: ctx, opts: opts, closed: make(chan struct{})}, nil
		},
	}
}

// logReader is a container's log as the engine sends it: the output from
// the start, multiplexed as stdcopy frames; with Follow it waits for more
// until the container stops.
type logReader struct {
	n    *Node
	id   string
	ctx  context.Context
	opts container.LogsOptions

	next      int    // index of the next chunk of output
	buf       []byte // what remains of the frame being read
	closeOnce sync.Once
	closed    chan struct{}
}

var errLogClosed = errors.New("fakedocker: log reader closed")

func (r *logReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		r.n.mu.Lock()
		c := r.n.containers[r.id]
		switch {
		case c == nil:
			r.n.mu.Unlock()
			return 0, io.EOF
		case r.next < len(c.output):
			ch := c.output[r.next]
			r.next++
			r.n.mu.Unlock()
			if ch.stream == wire.StreamStdout && r.opts.ShowStdout || ch.stream == wire.StreamStderr && r.opts.ShowStderr {
				r.buf = frame(ch)
			}
			continue
		case !r.opts.Follow || c.Status != StatusRunning:
			r.n.mu.Unlock()
			return 0, io.EOF
		}
		changed := r.n.changed
		r.n.mu.Unlock()
		select {
		case <-changed:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-r.closed:
			return 0, errLogClosed
		}
	}
	k := copy(p, r.buf)
	r.buf = r.buf[k:]
	return k, nil
}

func (r *logReader) Close() error {
	r.closeOnce.Do(func() { close(r.closed) })
	return nil
}

// frame is ch as stdcopy multiplexes it: stream byte, three zero bytes,
// the big-endian length, the data.
func frame(ch chunk) []byte {
	b := make([]byte, 8, 8+len(ch.data))
	b[0] = 1 // stdout
	if ch.stream == wire.StreamStderr {
		b[0] = 2
	}
	binary.BigEndian.PutUint32(b[4:], uint32(len(ch.data)))
	return append(b, ch.data...)
}

// ID is the node's swarm node id, which its engine's Info reports.
func (n *Node) ID() string { return n.id }
