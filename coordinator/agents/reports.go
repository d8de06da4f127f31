package agents

import (
	"context"
	"slices"
	"sync"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/wire"
)

// Reports hands what agents report of a build to the lifecycle: landings
// to the one watcher of each build, exits to every waiter. The Hub keeps
// one; a simulator of agents can keep one too and behave the same.
// The zero value is not usable: use NewReports.
type Reports struct {
	recorded func(buildID string) (*wire.Exit, error) // the exit on record, nil while running

	mu       sync.Mutex
	landings map[string]chan coordinator.Landing
	exits    map[string][]chan wire.Exit
}

// NewReports returns Reports whose WaitExit also delivers an exit that
// recorded already has (an agent that reported while the coordinator
// restarted).
func NewReports(recorded func(buildID string) (*wire.Exit, error)) *Reports {
	return &Reports{recorded: recorded, landings: map[string]chan coordinator.Landing{}, exits: map[string][]chan wire.Exit{}}
}

// Landings implements coordinator.Agents: the one watcher of buildID.
func (r *Reports) Landings(buildID string) (<-chan coordinator.Landing, func()) {
	ch := make(chan coordinator.Landing, 4)
	r.mu.Lock()
	r.landings[buildID] = ch
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		if r.landings[buildID] == ch {
			delete(r.landings, buildID)
		}
		r.mu.Unlock()
	}
}

// Landed passes an agent's Landed to whoever watches the build.
func (r *Reports) Landed(nodeID string, l wire.Landed) {
	r.mu.Lock()
	ch := r.landings[l.BuildID]
	r.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- coordinator.Landing{Node: nodeID, Container: l.ContainerID}:
	default: // the watcher has claims enough; it also polls swarm
	}
}

// WaitExit implements coordinator.Agents. The waiter is registered first,
// then the record is read, so an exit is never missed between the two.
func (r *Reports) WaitExit(ctx context.Context, buildID string) (<-chan wire.Exit, error) {
	w := make(chan wire.Exit, 1)
	r.mu.Lock()
	r.exits[buildID] = append(r.exits[buildID], w)
	r.mu.Unlock()
	drop := func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.exits[buildID] = slices.DeleteFunc(r.exits[buildID], func(c chan wire.Exit) bool { return c == w })
		if len(r.exits[buildID]) == 0 {
			delete(r.exits, buildID)
		}
	}
	x, err := r.recorded(buildID)
	if err != nil {
		drop()
		return nil, err
	}
	out := make(chan wire.Exit, 1)
	go func() { // ends with ctx or the exit
		defer close(out)
		defer drop()
		if x != nil {
			out <- *x
			return
		}
		select {
		case e := <-w:
			out <- e
		case <-ctx.Done():
		}
	}()
	return out, nil
}

// Exited hands a recorded exit to the build's waiters.
func (r *Reports) Exited(buildID string, e wire.Exit) {
	r.mu.Lock()
	ws := r.exits[buildID]
	delete(r.exits, buildID)
	r.mu.Unlock()
	for _, w := range ws {
		w <- e // buffered 1, and each waiter gets one exit
	}
}
