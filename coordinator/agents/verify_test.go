package agents

import (
	"context"
	"net"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm"
)

// fakeSwarm is a SwarmNodes with function fields.
type fakeSwarm struct {
	node  func(id string) (swarm.Node, error)
	tasks func(opts swarm.TaskListOptions) ([]swarm.Task, error)
}

func (f fakeSwarm) NodeInspectWithRaw(_ context.Context, id string) (swarm.Node, []byte, error) {
	n, err := f.node(id)
	return n, nil, err
}

func (f fakeSwarm) TaskList(_ context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error) {
	return f.tasks(opts)
}

func tcpAddr(s string) net.Addr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		panic(err)
	}
	return a
}

func TestSwarmVerifier(t *testing.T) {
	nodes := map[string]swarm.Node{
		"local":  {ID: "local", Status: swarm.NodeStatus{State: swarm.NodeStateReady, Addr: "10.99.0.1"}},
		"worker": {ID: "worker", Description: swarm.NodeDescription{Hostname: "w1"}, Status: swarm.NodeStatus{State: swarm.NodeStateReady, Addr: "10.99.0.2"}},
		"down":   {ID: "down", Status: swarm.NodeStatus{State: swarm.NodeStateDown, Addr: "10.99.0.3"}},
	}
	// Swarm's API resolves host names and id prefixes too.
	nodes["w1"], nodes["work"] = nodes["worker"], nodes["worker"]
	fs := fakeSwarm{
		node: func(id string) (swarm.Node, error) {
			n, ok := nodes[id]
			if !ok {
				return swarm.Node{}, cerrdefs.ErrNotFound
			}
			return n, nil
		},
		tasks: func(opts swarm.TaskListOptions) ([]swarm.Task, error) {
			if !opts.Filters.ExactMatch("node", "worker") {
				return nil, nil
			}
			return []swarm.Task{{NetworksAttachments: []swarm.NetworkAttachment{{Addresses: []string{"10.0.1.7/24"}}}}}, nil
		},
	}
	v := &SwarmVerifier{Docker: fs, LocalNodeID: "local"}
	for _, tc := range []struct {
		node, from string
		err        string // "" accepted
	}{
		{"local", "127.0.0.1:5000", ""},
		{"local", "[::1]:5000", ""},
		{"local", "10.99.0.1:5000", ""},
		{"worker", "10.99.0.2:5000", ""},
		{"worker", "10.0.1.7:5000", ""}, // its agent task on the overlay
		{"worker", "127.0.0.1:5000", "speaks only for the coordinator's node"},
		{"worker", "10.99.0.1:5000", "is not from node worker"}, // the manager claiming the worker
		{"worker", "10.0.1.8:5000", "is not from node worker"},
		{"down", "10.99.0.3:5000", "is down, not ready"},
		{"ghost", "10.99.0.4:5000", "not in this swarm"},
		{"", "10.99.0.4:5000", "names no node"},
		{"w1", "10.99.0.2:5000", "not a node's full id"},   // the host name
		{"work", "10.99.0.2:5000", "not a node's full id"}, // an id prefix
	} {
		err := v.VerifyAgent(context.Background(), tc.node, tcpAddr(tc.from))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s from %s refused: %v", tc.node, tc.from, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s from %s: %v, want an error with %q", tc.node, tc.from, err, tc.err)
		}
	}
}
