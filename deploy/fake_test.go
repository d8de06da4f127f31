package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
)

// fakeEngine is an Engine of function fields; a call whose field is nil
// fails the test.
type fakeEngine struct {
	t              *testing.T
	info           func() (system.Info, error)
	nodeList       func() ([]swarm.Node, error)
	imageInspect   func(ref string) (image.InspectResponse, error)
	secretList     func(swarm.SecretListOptions) ([]swarm.Secret, error)
	secretInspect  func(name string) (swarm.Secret, error)
	secretCreate   func(swarm.SecretSpec) (swarm.SecretCreateResponse, error)
	secretRemove   func(id string) error
	serviceList    func(swarm.ServiceListOptions) ([]swarm.Service, error)
	serviceRemove  func(id string) error
	serviceLogs    func(service string, o container.LogsOptions) (io.ReadCloser, error)
	taskList       func(swarm.TaskListOptions) ([]swarm.Task, error)
	containerList  func(container.ListOptions) ([]container.Summary, error)
	networkList    func(network.ListOptions) ([]network.Summary, error)
	networkInspect func(id string) (network.Inspect, error)
	networkRemove  func(id string) error
	volumeList     func(volume.ListOptions) (volume.ListResponse, error)
	volumeRemove   func(id string) error
}

func (f *fakeEngine) unexpected(call string) {
	f.t.Helper()
	f.t.Errorf("unexpected call %s", call)
}

var errUnexpected = errors.New("unexpected call")

func (f *fakeEngine) DaemonHost() string { return "unix:///fake/docker.sock" }

func (f *fakeEngine) Info(context.Context) (system.Info, error) {
	if f.info == nil {
		f.unexpected("Info")
		return system.Info{}, errUnexpected
	}
	return f.info()
}

func (f *fakeEngine) NodeList(context.Context, swarm.NodeListOptions) ([]swarm.Node, error) {
	if f.nodeList == nil {
		f.unexpected("NodeList")
		return nil, errUnexpected
	}
	return f.nodeList()
}

func (f *fakeEngine) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	if f.imageInspect == nil {
		f.unexpected("ImageInspect")
		return image.InspectResponse{}, errUnexpected
	}
	return f.imageInspect(ref)
}

func (f *fakeEngine) SecretList(_ context.Context, o swarm.SecretListOptions) ([]swarm.Secret, error) {
	if f.secretList == nil {
		f.unexpected("SecretList")
		return nil, errUnexpected
	}
	return f.secretList(o)
}

func (f *fakeEngine) SecretInspectWithRaw(_ context.Context, name string) (swarm.Secret, []byte, error) {
	if f.secretInspect == nil {
		f.unexpected("SecretInspectWithRaw")
		return swarm.Secret{}, nil, errUnexpected
	}
	s, err := f.secretInspect(name)
	return s, nil, err
}

func (f *fakeEngine) SecretCreate(_ context.Context, spec swarm.SecretSpec) (swarm.SecretCreateResponse, error) {
	if f.secretCreate == nil {
		f.unexpected("SecretCreate")
		return swarm.SecretCreateResponse{}, errUnexpected
	}
	return f.secretCreate(spec)
}

func (f *fakeEngine) SecretRemove(_ context.Context, id string) error {
	if f.secretRemove == nil {
		f.unexpected("SecretRemove")
		return errUnexpected
	}
	return f.secretRemove(id)
}

func (f *fakeEngine) ServiceList(_ context.Context, o swarm.ServiceListOptions) ([]swarm.Service, error) {
	if f.serviceList == nil {
		f.unexpected("ServiceList")
		return nil, errUnexpected
	}
	return f.serviceList(o)
}

func (f *fakeEngine) ServiceRemove(_ context.Context, id string) error {
	if f.serviceRemove == nil {
		f.unexpected("ServiceRemove")
		return errUnexpected
	}
	return f.serviceRemove(id)
}

func (f *fakeEngine) ServiceLogs(_ context.Context, service string, o container.LogsOptions) (io.ReadCloser, error) {
	if f.serviceLogs == nil {
		f.unexpected("ServiceLogs")
		return nil, errUnexpected
	}
	return f.serviceLogs(service, o)
}

func (f *fakeEngine) TaskList(_ context.Context, o swarm.TaskListOptions) ([]swarm.Task, error) {
	if f.taskList == nil {
		f.unexpected("TaskList")
		return nil, errUnexpected
	}
	return f.taskList(o)
}

func (f *fakeEngine) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	if f.containerList == nil {
		f.unexpected("ContainerList")
		return nil, errUnexpected
	}
	return f.containerList(o)
}

func (f *fakeEngine) NetworkList(_ context.Context, o network.ListOptions) ([]network.Summary, error) {
	if f.networkList == nil {
		f.unexpected("NetworkList")
		return nil, errUnexpected
	}
	return f.networkList(o)
}

func (f *fakeEngine) NetworkInspect(_ context.Context, id string, _ network.InspectOptions) (network.Inspect, error) {
	if f.networkInspect == nil {
		f.unexpected("NetworkInspect")
		return network.Inspect{}, errUnexpected
	}
	return f.networkInspect(id)
}

func (f *fakeEngine) NetworkRemove(_ context.Context, id string) error {
	if f.networkRemove == nil {
		f.unexpected("NetworkRemove")
		return errUnexpected
	}
	return f.networkRemove(id)
}

func (f *fakeEngine) VolumeList(_ context.Context, o volume.ListOptions) (volume.ListResponse, error) {
	if f.volumeList == nil {
		f.unexpected("VolumeList")
		return volume.ListResponse{}, errUnexpected
	}
	return f.volumeList(o)
}

func (f *fakeEngine) VolumeRemove(_ context.Context, id string, _ bool) error {
	if f.volumeRemove == nil {
		f.unexpected("VolumeRemove")
		return errUnexpected
	}
	return f.volumeRemove(id)
}

// fakeSwarm is a swarm as far as up and down see it: nodes, secrets, the
// stack that the fake docker stack deploy makes (a service's tasks run at
// once with the spec's forge.deployment label), its network and volume.
type fakeSwarm struct {
	t     *testing.T
	mu    sync.Mutex
	state swarm.LocalNodeState
	// worker: this node may not manage the swarm.
	worker   bool
	nodes    []swarm.Node
	images   map[string]string // reference -> id
	secrets  map[string]swarm.Secret
	services map[string]string // name -> forge.deployment
	network  bool
	volume   bool
	// agentLogs are what the agent service logged.
	agentLogs string

	created, removed []string   // secrets, in order
	deploys          [][]string // each docker stack deploy's arguments
	envs             [][]string // and its environment
}

func newFakeSwarm(t *testing.T) *fakeSwarm {
	return &fakeSwarm{
		t:     t,
		state: swarm.LocalNodeStateActive,
		nodes: []swarm.Node{node("node1", "host1", swarm.NodeStateReady, swarm.NodeAvailabilityActive)},
		images: map[string]string{
			"forge/coordinator:v1": "sha256:c1", "forge/agent:v1": "sha256:a1",
		},
		secrets:  map[string]swarm.Secret{},
		services: map[string]string{},
	}
}

func node(id, host string, state swarm.NodeState, avail swarm.NodeAvailability) swarm.Node {
	return swarm.Node{ID: id, Description: swarm.NodeDescription{Hostname: host},
		Status: swarm.NodeStatus{State: state}, Spec: swarm.NodeSpec{Availability: avail}}
}

// label is the value of a "label" filter KEY=value.
func label(args interface{ Get(string) []string }, key string) string {
	for _, l := range args.Get("label") {
		if k, v, ok := strings.Cut(l, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func (f *fakeSwarm) engine() *fakeEngine {
	lock := func() func() { f.mu.Lock(); return f.mu.Unlock }
	return &fakeEngine{
		t: f.t,
		info: func() (system.Info, error) {
			defer lock()()
			return system.Info{Swarm: swarm.Info{LocalNodeState: f.state, ControlAvailable: !f.worker,
				NodeID: "node1", NodeAddr: "10.0.0.1"}}, nil
		},
		nodeList: func() ([]swarm.Node, error) {
			defer lock()()
			return slices.Clone(f.nodes), nil
		},
		imageInspect: func(ref string) (image.InspectResponse, error) {
			defer lock()()
			if id, ok := f.images[ref]; ok {
				return image.InspectResponse{ID: id}, nil
			}
			return image.InspectResponse{}, cerrdefs.ErrNotFound
		},
		secretInspect: func(name string) (swarm.Secret, error) {
			defer lock()()
			if s, ok := f.secrets[name]; ok {
				return s, nil
			}
			return swarm.Secret{}, cerrdefs.ErrNotFound
		},
		secretCreate: func(spec swarm.SecretSpec) (swarm.SecretCreateResponse, error) {
			defer lock()()
			if _, ok := f.secrets[spec.Name]; ok {
				return swarm.SecretCreateResponse{}, cerrdefs.ErrConflict
			}
			f.secrets[spec.Name] = swarm.Secret{ID: "id-" + spec.Name, Spec: spec}
			f.created = append(f.created, spec.Name)
			return swarm.SecretCreateResponse{ID: "id-" + spec.Name}, nil
		},
		secretList: func(o swarm.SecretListOptions) ([]swarm.Secret, error) {
			defer lock()()
			if f.state != swarm.LocalNodeStateActive {
				return nil, errors.New("This node is not a swarm manager.")
			}
			var list []swarm.Secret
			for _, s := range f.secrets {
				if s.Spec.Labels["forge.stack"] == label(o.Filters, "forge.stack") {
					list = append(list, s)
				}
			}
			return list, nil
		},
		secretRemove: func(id string) error {
			defer lock()()
			for name, s := range f.secrets {
				if s.ID == id || name == id {
					delete(f.secrets, name)
					f.removed = append(f.removed, name)
					return nil
				}
			}
			return cerrdefs.ErrNotFound
		},
		taskList: func(o swarm.TaskListOptions) ([]swarm.Task, error) {
			defer lock()()
			deployment, ok := f.services[o.Filters.Get("service")[0]]
			if !ok {
				return nil, cerrdefs.ErrNotFound
			}
			return []swarm.Task{{NodeID: "node1", Status: swarm.TaskStatus{State: swarm.TaskStateRunning},
				Spec: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Labels: map[string]string{"forge.deployment": deployment}}}}}, nil
		},
		serviceLogs: func(service string, o container.LogsOptions) (io.ReadCloser, error) {
			defer lock()()
			var buf bytes.Buffer
			if strings.HasSuffix(service, "_agent") {
				stdcopy.NewStdWriter(&buf, stdcopy.Stderr).Write([]byte(f.agentLogs))
			}
			return io.NopCloser(&buf), nil
		},
		serviceList: func(o swarm.ServiceListOptions) ([]swarm.Service, error) {
			defer lock()()
			var list []swarm.Service
			for name := range f.services {
				list = append(list, swarm.Service{ID: "id-" + name, Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: name}}})
			}
			return list, nil
		},
		serviceRemove: func(id string) error {
			defer lock()()
			delete(f.services, strings.TrimPrefix(id, "id-"))
			return nil
		},
		// A container per service, gone with it.
		containerList: func(container.ListOptions) ([]container.Summary, error) {
			defer lock()()
			var list []container.Summary
			for name := range f.services {
				list = append(list, container.Summary{ID: "c-" + name, Names: []string{"/" + name + ".1.x"}, Status: "Up 1 second"})
			}
			return list, nil
		},
		networkList: func(network.ListOptions) ([]network.Summary, error) {
			defer lock()()
			if !f.network {
				return nil, nil
			}
			return []network.Summary{{ID: "n1", Name: "forge_forge"}}, nil
		},
		networkRemove: func(string) error {
			defer lock()()
			if len(f.services) > 0 {
				return errors.New("network forge_forge has active endpoints")
			}
			f.network = false
			return nil
		},
		volumeList: func(volume.ListOptions) (volume.ListResponse, error) {
			defer lock()()
			if !f.volume {
				return volume.ListResponse{}, nil
			}
			return volume.ListResponse{Volumes: []*volume.Volume{{Name: "forge_data"}}}, nil
		},
		volumeRemove: func(string) error {
			defer lock()()
			f.volume = false
			return nil
		},
	}
}

// dockerCLI is docker stack deploy: it checks the compose files are the
// embedded ones and runs the services with the labels the environment sets.
func (f *fakeSwarm) dockerCLI(_ context.Context, env []string, args ...string) ([]byte, error) {
	if slices.Equal(args, []string{"stack", "deploy", "--help"}) {
		return []byte("  -d, --detach   Exit immediately instead of waiting\n"), nil
	}
	if len(args) < 2 || args[0] != "stack" || args[1] != "deploy" {
		return nil, fmt.Errorf("fake docker: %q", args)
	}
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	for i, a := range args {
		if a == "-c" {
			got, err := os.ReadFile(args[i+1])
			want := map[string][]byte{"stack.yml": stackYML, "stack.github.yml": stackGitHubYML,
				"stack.signin.yml": stackSigninYML}[filepath.Base(args[i+1])]
			if err != nil || !bytes.Equal(got, want) {
				f.t.Errorf("docker stack deploy -c %s: not the embedded file (%v)", args[i+1], err)
			}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deploys = append(f.deploys, args)
	f.envs = append(f.envs, env)
	stack := args[len(args)-1]
	var out strings.Builder
	for _, s := range []string{"agent", "coordinator"} {
		verb := "Creating"
		if _, ok := f.services[stack+"_"+s]; ok {
			verb = "Updating"
		}
		fmt.Fprintf(&out, "%s service %s_%s\n", verb, stack, s)
		f.services[stack+"_"+s] = vars["FORGE_"+strings.ToUpper(s)+"_DEPLOYMENT"]
	}
	f.network, f.volume = true, true
	return []byte(out.String()), nil
}

// fakeCoordinator is the coordinator's API: the agents of nodes, and
// builds that end when they are cancelled. As the coordinator does with
// --admin-token-file, it wants the token of tokenFile, read at each
// request, for the agents and cancelling; without a credential it lists
// the builds of public repositories, of which it has none.
type fakeCoordinator struct {
	mu        sync.Mutex
	tokenFile string
	agents    []string
	running   []string
	cancelled []string
}

// credential is what the request's Authorization says: none, the admin
// token, or another (refused).
func (c *fakeCoordinator) credential(r *http.Request) (given, admin bool) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return false, false
	}
	c.mu.Lock()
	file := c.tokenFile
	c.mu.Unlock()
	token, err := os.ReadFile(file)
	return true, err == nil && len(bytes.TrimSpace(token)) > 0 && auth == "Bearer "+strings.TrimRight(string(token), " \t\r\n")
}

func unauthorized(w http.ResponseWriter) {
	w.WriteHeader(http.StatusUnauthorized)
	io.WriteString(w, `{"error": "unauthorized", "message": "a bad or missing credential"}`)
}

// start serves it on loopback and returns its port.
func (c *fakeCoordinator) start(t *testing.T) string {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /api/agents", func(w http.ResponseWriter, r *http.Request) {
		if _, admin := c.credential(r); !admin {
			unauthorized(w)
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		list := []map[string]any{}
		for _, n := range c.agents {
			list = append(list, map[string]any{"node_id": n, "hostname": "h", "protocol": 1})
		}
		json.NewEncoder(w).Encode(list)
	})
	mux.HandleFunc("GET /api/builds", func(w http.ResponseWriter, r *http.Request) {
		given, admin := c.credential(r)
		if given && !admin {
			unauthorized(w)
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		list := []map[string]any{}
		if admin && r.URL.Query().Get("state") == "running" {
			for _, id := range c.running {
				list = append(list, map[string]any{"id": id, "state": "running"})
			}
		}
		json.NewEncoder(w).Encode(list)
	})
	mux.HandleFunc("POST /api/builds/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		if _, admin := c.credential(r); !admin {
			unauthorized(w)
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.cancelled = append(c.cancelled, r.PathValue("id"))
		c.running = slices.DeleteFunc(c.running, func(id string) bool { return id == r.PathValue("id") })
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	_, port, _ := net.SplitHostPort(u.Host)
	return port
}

// fakeSocket is a unix socket standing for /var/run/docker.sock.
func fakeSocket(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return path
}
