// Package deploy is `forge deploy up` and `forge deploy down`, which `make up`
// and `make down` run: Forge on this swarm as the stack of stack.yml, with
// its CA, the coordinator's certificate, the join token agents trade for
// certificates of their own node, webhook secret, admin token, session key,
// secrets key and settings made once and kept in a state folder, and each file given to
// the services as a Docker secret named after a hash of its content
// (README: Deploying on a swarm).
//
// The stack itself is deployed by `docker stack deploy`, so that the
// compose files stay the one description of the services (what operators
// edit, what `docker stack config` checks); everything else goes through
// the Engine API.
package deploy

import (
	"context"
	_ "embed"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
)

// The compose files, built into the binary: `make up` rebuilds bin/forge
// first, so an edit to any is deployed.
var (
	//go:embed stack.yml
	stackYML []byte
	//go:embed stack.github.yml
	stackGitHubYML []byte
	//go:embed stack.signin.yml
	stackSigninYML []byte
)

// Engine is the part of the Docker Engine API that up and down use;
// *client.Client has it.
type Engine interface {
	DaemonHost() string
	Info(ctx context.Context) (system.Info, error)
	NodeList(ctx context.Context, options swarm.NodeListOptions) ([]swarm.Node, error)
	ImageInspect(ctx context.Context, image string, _ ...client.ImageInspectOption) (image.InspectResponse, error)

	SecretList(ctx context.Context, options swarm.SecretListOptions) ([]swarm.Secret, error)
	SecretInspectWithRaw(ctx context.Context, name string) (swarm.Secret, []byte, error)
	SecretCreate(ctx context.Context, secret swarm.SecretSpec) (swarm.SecretCreateResponse, error)
	SecretRemove(ctx context.Context, id string) error

	ServiceList(ctx context.Context, options swarm.ServiceListOptions) ([]swarm.Service, error)
	ServiceRemove(ctx context.Context, serviceID string) error
	ServiceLogs(ctx context.Context, serviceID string, options container.LogsOptions) (io.ReadCloser, error)
	TaskList(ctx context.Context, options swarm.TaskListOptions) ([]swarm.Task, error)

	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	NetworkList(ctx context.Context, options network.ListOptions) ([]network.Summary, error)
	NetworkInspect(ctx context.Context, network string, options network.InspectOptions) (network.Inspect, error)
	NetworkRemove(ctx context.Context, network string) error
	VolumeList(ctx context.Context, options volume.ListOptions) (volume.ListResponse, error)
	VolumeRemove(ctx context.Context, volumeID string, force bool) error
}

// Config is what up and down share.
type Config struct {
	// Stack is the stack's name (FORGE_STACK; "forge"). Its services are
	// STACK_coordinator and STACK_agent, its secrets STACK_<what>_<hash>.
	Stack string
	// StateDir is the state folder (FORGE_STATE_DIR; ".forge").
	StateDir string
	// Timeout bounds the wait for the stack to converge or to be gone.
	Timeout time.Duration
	// Out and Err receive the progress and the failures, one line each,
	// prefixed "make up: " or "make down: ".
	Out, Err io.Writer

	// Engine is the manager's Docker engine; nil opens the one DOCKER_HOST
	// names (or the local socket).
	Engine Engine
	// HTTP reaches the coordinator's published port; nil: 5 s a request.
	HTTP *http.Client
	// Interval between two looks while waiting (1 s when zero).
	Interval time.Duration
}

const (
	defaultStack    = "forge"
	defaultStateDir = ".forge"
)

// run is one run of up or down: its settings, its engine, its output.
type run struct {
	Config
	me     string // "make up" or "make down", the prefix of every line
	engine Engine
	closer io.Closer // the client opened here, if any
}

// start fills in the defaults and opens the engine. The run it returns
// can report a failure even when opening failed.
func (c Config) start(me string) (*run, error) {
	if c.Stack == "" {
		c.Stack = defaultStack
	}
	if c.StateDir == "" {
		c.StateDir = defaultStateDir
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Err == nil {
		c.Err = io.Discard
	}
	if c.HTTP == nil {
		c.HTTP = &http.Client{Timeout: 5 * time.Second}
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	r := &run{Config: c, me: me, engine: c.Engine}
	if r.engine == nil {
		cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
		if err != nil {
			return r, fmt.Errorf("docker client: %w", err)
		}
		r.engine, r.closer = cli, cli
	}
	return r, nil
}

// finish reports a failure the way every other line is reported, closes
// what start opened, and returns err.
func (r *run) finish(err error) error {
	if err != nil {
		r.warn("%v", err)
	}
	if r.closer != nil {
		r.closer.Close()
	}
	return err
}

func (r *run) say(format string, args ...any) {
	fmt.Fprintf(r.Out, r.me+": "+format+"\n", args...)
}

func (r *run) warn(format string, args ...any) {
	fmt.Fprintf(r.Err, r.me+": "+format+"\n", args...)
}

// pause waits one Interval, or less if ctx ends.
func (r *run) pause(ctx context.Context) error { return sleep(ctx, r.Interval) }

// sleep waits d, or less if ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// service is the full name of one of the stack's services.
func (r *run) service(name string) string { return r.Stack + "_" + name }

// namespace selects what docker stack deploy made for the stack.
func (r *run) namespace() string { return "com.docker.stack.namespace=" + r.Stack }

// swarmManager checks that this engine is a swarm manager when swarm is
// on, and returns what the engine says of itself.
func (r *run) swarmManager(ctx context.Context) (system.Info, error) {
	info, err := r.engine.Info(ctx)
	if err != nil {
		return info, fmt.Errorf("cannot reach the Docker engine (is it running, and may you use it?): %w", err)
	}
	if info.Swarm.LocalNodeState == swarm.LocalNodeStateActive && !info.Swarm.ControlAvailable {
		return info, fmt.Errorf("this node is a swarm worker; run %s on a manager (docker node ls lists them)", r.me)
	}
	return info, nil
}
