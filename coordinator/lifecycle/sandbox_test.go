package lifecycle

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/plan"
)

// fakeNodes answers NodeList with its nodes (filtered by role as swarm
// does) or its error, and counts the calls.
type fakeNodes struct {
	nodes []swarm.Node
	err   error
	calls atomic.Int32
}

func (f *fakeNodes) NodeList(_ context.Context, opts swarm.NodeListOptions) ([]swarm.Node, error) {
	f.calls.Add(1)
	if f.err != nil {
		return nil, f.err
	}
	var out []swarm.Node
	for _, n := range f.nodes {
		if roles := opts.Filters.Get("role"); len(roles) == 0 || slices.Contains(roles, string(n.Spec.Role)) {
			out = append(out, n)
		}
	}
	return out, nil
}

func node(role swarm.NodeRole, state swarm.NodeState, avail swarm.NodeAvailability) swarm.Node {
	return swarm.Node{Spec: swarm.NodeSpec{Role: role, Availability: avail}, Status: swarm.NodeStatus{State: state}}
}

// The runner asks swarm for a ready, active worker and passes the answer
// and its sandbox to the plan.
func TestRunnerSandboxAndPlacement(t *testing.T) {
	manager := node(swarm.NodeRoleManager, swarm.NodeStateReady, swarm.NodeAvailabilityActive)
	for _, tc := range []struct {
		name       string
		nodes      []swarm.Node
		onManagers bool
		pin        string
		want       []string
		asked      int32
	}{
		{"manager only", []swarm.Node{manager}, false, "", nil, 1},
		{"ready worker", []swarm.Node{manager, node(swarm.NodeRoleWorker, swarm.NodeStateReady, swarm.NodeAvailabilityActive)}, false, "", []string{"node.role==worker"}, 1},
		{"worker down", []swarm.Node{manager, node(swarm.NodeRoleWorker, swarm.NodeStateDown, swarm.NodeAvailabilityActive)}, false, "", nil, 1},
		{"worker drained", []swarm.Node{manager, node(swarm.NodeRoleWorker, swarm.NodeStateReady, swarm.NodeAvailabilityDrain)}, false, "", nil, 1},
		{"builds on managers", []swarm.Node{node(swarm.NodeRoleWorker, swarm.NodeStateReady, swarm.NodeAvailabilityActive)}, true, "", nil, 0},
		{"forge run pins", []swarm.Node{node(swarm.NodeRoleWorker, swarm.NodeStateReady, swarm.NodeAvailabilityActive)}, false, "mgr1", []string{"node.id==mgr1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := &fakeNodes{nodes: tc.nodes}
			e := newRunnerEnv(t, func(c *Config) {
				c.Nodes = nodes
				c.Sandbox = plan.Sandbox{Pids: 64, BuildsOnManagers: tc.onManagers}
			})
			req := e.request(testSHA('s'), "")
			req.Node = tc.pin
			q := e.submit(req)
			e.wait(q.ID) // ends as error: the simulated task never lands
			specs := e.sw.Created()
			if len(specs) != 1 {
				t.Fatalf("%d services created", len(specs))
			}
			var got []string
			if p := specs[0].TaskTemplate.Placement; p != nil {
				got = p.Constraints
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("constraints %q, want %q", got, tc.want)
			}
			if l := specs[0].TaskTemplate.Resources.Limits; l.Pids != 64 || l.MemoryBytes != plan.DefaultMemory {
				t.Errorf("limits %+v: the runner's sandbox did not reach the plan", l)
			}
			if n := nodes.calls.Load(); n != tc.asked {
				t.Errorf("NodeList called %d times, want %d", n, tc.asked)
			}
		})
	}
}

// A swarm that cannot list its nodes fails the build before any service:
// placing it blind could put it on a manager.
func TestRunnerNodeListError(t *testing.T) {
	e := newRunnerEnv(t, func(c *Config) { c.Nodes = &fakeNodes{err: errors.New("rpc error: manager unavailable")} })
	q := e.submit(e.request(testSHA('n'), ""))
	b := e.wait(q.ID)
	if b.State != coordinator.Error || !strings.Contains(b.Reason, "list swarm workers") || !strings.Contains(b.Reason, "manager unavailable") {
		t.Errorf("%s %q", b.State, b.Reason)
	}
	if n := len(e.sw.Created()); n != 0 {
		t.Errorf("%d services created", n)
	}
}

// A config above the operator's maximum ends as error naming the key, and
// nothing is created in swarm.
func TestRunnerSandboxRefusal(t *testing.T) {
	e := newRunnerEnv(t, func(c *Config) { c.Sandbox = plan.Sandbox{MaxMemory: 8 << 30} })
	q := e.submit(e.requestWith(testSHA('r'), "", testConfigText+"resources: {memory: 64GiB}\n"))
	b := e.wait(q.ID)
	if b.State != coordinator.Error || !strings.Contains(b.Reason, "resources.memory: 64GiB is above this coordinator's maximum of 8GiB") {
		t.Errorf("%s %q", b.State, b.Reason)
	}
	if n := len(e.sw.Created()); n != 0 {
		t.Errorf("%d services created", n)
	}
}
