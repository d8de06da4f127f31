package buildsim

import (
	"slices"
	"sync"

	"github.com/forge-ci/forge/coordinator"
)

// Changes records a lifecycle's OnChange calls: the states each build
// went through.
type Changes struct {
	mu     sync.Mutex
	states map[string][]coordinator.State
}

// Record is an OnChange.
func (c *Changes) Record(b *coordinator.Build) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.states == nil {
		c.states = map[string][]coordinator.State{}
	}
	c.states[b.ID] = append(c.states[b.ID], b.State)
}

// Of returns the states build id went through.
func (c *Changes) Of(id string) []coordinator.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.states[id])
}
