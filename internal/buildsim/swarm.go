// Package buildsim simulates what the build lifecycle talks to: the
// manager node's swarm (coordinator.Swarm) and the agents on the nodes
// (coordinator.Agents). Tests set what the simulation does through
// function fields, then read back what the lifecycle asked for. The
// agents write what they report into a real logs.Store, as agents.Hub
// does.
package buildsim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/plan"
)

// Service is a service the simulated swarm holds.
type Service struct {
	ID, BuildID string
	Spec        swarm.ServiceSpec
	Created     time.Time
	polls       int // task lists asked for it
}

// Swarm simulates the manager node's Engine API: services are created,
// listed and removed, and Tasks says what the task list of a service
// shows. Set the fields before the lifecycle uses the swarm.
type Swarm struct {
	t testing.TB

	// CreateErr, when set, fails every ServiceCreate.
	CreateErr error
	// ListErr, when set, fails every ServiceList.
	ListErr error
	// OnCreate, when set, is called after a service is created.
	OnCreate func(s *Service)
	// Tasks says what the task list shows for s on its poll-th listing
	// (from 1); nil shows one new task with no node.
	Tasks func(s *Service, poll int) []swarm.Task

	mu       sync.Mutex
	n        int
	services []*Service // in creation order; listed by ServiceList unless removed
	specs    []swarm.ServiceSpec
	removed  map[string]int // service id -> ServiceRemove calls
	taskList int            // TaskList calls
}

var _ coordinator.Swarm = (*Swarm)(nil)

// NewSwarm returns an empty swarm; misuse fails t.
func NewSwarm(t testing.TB) *Swarm {
	return &Swarm{t: t, removed: map[string]int{}}
}

// ServiceCreate implements coordinator.Swarm: the service gets the id
// "svc-<n>" and the build of its plan.LabelBuild label.
func (s *Swarm) ServiceCreate(_ context.Context, spec swarm.ServiceSpec, _ swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error) {
	s.mu.Lock()
	s.specs = append(s.specs, spec)
	if s.CreateErr != nil {
		s.mu.Unlock()
		return swarm.ServiceCreateResponse{}, s.CreateErr
	}
	s.n++
	svc := &Service{ID: fmt.Sprintf("svc-%d", s.n), BuildID: spec.Labels[plan.LabelBuild], Spec: spec, Created: time.Now()}
	s.services = append(s.services, svc)
	hook := s.OnCreate
	s.mu.Unlock()
	if hook != nil {
		hook(svc)
	}
	return swarm.ServiceCreateResponse{ID: svc.ID}, nil
}

// ServiceRemove implements coordinator.Swarm; a service removed already,
// or never there, is not found.
func (s *Swarm) ServiceRemove(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed[id]++
	if s.removed[id] > 1 || s.byID(id) == nil {
		return cerrdefs.ErrNotFound
	}
	return nil
}

// ServiceList implements coordinator.Swarm: the services not removed
// whose labels match the filter's, which must name plan.LabelBuild.
func (s *Swarm) ServiceList(_ context.Context, opts swarm.ServiceListOptions) ([]swarm.Service, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ListErr != nil {
		return nil, s.ListErr
	}
	labels := opts.Filters.Get("label")
	if !slices.Contains(labels, plan.LabelBuild) {
		s.t.Errorf("ServiceList filters by labels %q, without %q", labels, plan.LabelBuild)
	}
	var out []swarm.Service
	for _, svc := range s.services {
		if s.removed[svc.ID] == 0 && hasLabels(svc.Spec.Labels, labels) {
			out = append(out, swarm.Service{ID: svc.ID, Spec: svc.Spec})
		}
	}
	return out, nil
}

// TaskList implements coordinator.Swarm for a filter on one service.
func (s *Swarm) TaskList(_ context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error) {
	ids := opts.Filters.Get("service")
	s.mu.Lock()
	s.taskList++
	if len(ids) != 1 {
		s.mu.Unlock()
		s.t.Errorf("TaskList filters by service %q, want one service", ids)
		return nil, nil
	}
	svc := s.byID(ids[0])
	if svc == nil {
		s.mu.Unlock()
		s.t.Errorf("TaskList for unknown service %s", ids[0])
		return nil, nil
	}
	svc.polls++
	poll, tasks := svc.polls, s.Tasks
	s.mu.Unlock()
	var out []swarm.Task
	if tasks == nil {
		out = []swarm.Task{{Status: swarm.TaskStatus{State: swarm.TaskStateNew}}}
	} else {
		out = tasks(svc, poll)
	}
	for i := range out {
		out[i].ServiceID = svc.ID
		if out[i].ID == "" {
			out[i].ID = "task-" + svc.ID
		}
	}
	return out, nil
}

// hasLabels says whether labels match every filter, "key" or "key=value",
// as the Engine's label filter does.
func hasLabels(labels map[string]string, filters []string) bool {
	for _, f := range filters {
		k, v, withValue := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || withValue && got != v {
			return false
		}
	}
	return true
}

// byID returns the service with that id; s.mu is held.
func (s *Swarm) byID(id string) *Service {
	for _, svc := range s.services {
		if svc.ID == id {
			return svc
		}
	}
	return nil
}

// Add puts a build's service in the swarm as if the coordinator instance
// had created it before the test (for Recover).
func (s *Swarm) Add(instance, id, buildID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	labels := map[string]string{plan.LabelBuild: buildID, coordinator.LabelCoordinator: instance}
	s.services = append(s.services, &Service{ID: id, BuildID: buildID,
		Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "forge-" + id, Labels: labels}}})
}

// Service returns the service of a build, or nil.
func (s *Swarm) Service(buildID string) *Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.services {
		if svc.BuildID == buildID {
			return svc
		}
	}
	return nil
}

// Polls counts the task lists asked for the service of a build.
func (s *Swarm) Polls(buildID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.services {
		if svc.BuildID == buildID {
			return svc.polls
		}
	}
	return 0
}

// Removals counts the ServiceRemove calls of a service.
func (s *Swarm) Removals(serviceID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removed[serviceID]
}

// TotalRemovals counts every ServiceRemove call.
func (s *Swarm) TotalRemovals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.removed {
		n += c
	}
	return n
}

// Created returns the specs of every ServiceCreate call, failed ones too.
func (s *Swarm) Created() []swarm.ServiceSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.specs)
}

// TaskLists counts every TaskList call.
func (s *Swarm) TaskLists() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.taskList
}

// Task states as swarm shows them.

// TaskAssigned is a task placed on node, its container not created yet.
func TaskAssigned(node string) swarm.Task {
	return swarm.Task{NodeID: node, Status: swarm.TaskStatus{State: swarm.TaskStateAssigned, Message: "assigned"}}
}

// TaskFailedStart is what swarm shows once a build's container exists:
// the start of /forgexec failed (DESIGN.md §2), the container stays.
func TaskFailedStart(node, container string) swarm.Task {
	return swarm.Task{NodeID: node, Status: swarm.TaskStatus{
		State: swarm.TaskStateFailed, Message: "starting container failed",
		Err:             `starting container failed: exec: "/forgexec": stat /forgexec: no such file or directory`,
		ContainerStatus: &swarm.ContainerStatus{ContainerID: container, ExitCode: 127},
	}}
}

// LandsOn makes every service's task land on node with container
// "c-<service id>", seen in the task list from the second poll on.
func LandsOn(node string) func(*Service, int) []swarm.Task {
	return func(s *Service, poll int) []swarm.Task {
		if poll < 2 {
			return []swarm.Task{TaskAssigned(node)}
		}
		return []swarm.Task{TaskFailedStart(node, "c-"+s.ID)}
	}
}
