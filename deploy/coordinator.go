package deploy

import (
	"context"
	"net/http"
	"slices"

	"github.com/forge-ci/forge/coordinator/web"
)

// coordinator is the deployed coordinator's HTTP API, at its published
// port on this node, through the API's own client, with the admin token:
// the agents and cancelling need it, and without it the builds listed are
// only those of public repositories.
type coordinator struct {
	base     string // http://127.0.0.1:PORT, for messages
	api      *web.Client
	hasToken bool // the admin token goes with every request
}

func newCoordinator(port, token string, hc *http.Client) (coordinator, error) {
	base := "http://127.0.0.1:" + port
	api, err := web.NewClient(base, token, hc)
	return coordinator{base: base, api: api, hasToken: token != ""}, err
}

// healthy: GET /healthz answers ok.
func (c coordinator) healthy(ctx context.Context) bool { return c.api.Health(ctx) == nil }

// agentNodes lists the nodes whose agent is connected, sorted, once each.
func (c coordinator) agentNodes(ctx context.Context) ([]string, error) {
	agents, err := c.api.Agents(ctx)
	if err != nil {
		return nil, err
	}
	var nodes []string
	for _, a := range agents {
		nodes = append(nodes, a.NodeID)
	}
	slices.Sort(nodes)
	return slices.Compact(nodes), nil
}

// unfinished lists the ids of the builds still queued or running, and
// the first failure to list them: a coordinator that does not answer has
// none.
func (c coordinator) unfinished(ctx context.Context) ([]string, error) {
	var ids []string
	var first error
	for _, state := range []string{"queued", "running"} {
		found, err := c.buildIDs(ctx, state)
		if first == nil {
			first = err
		}
		ids = append(ids, found...)
	}
	return ids, first
}

// buildIDs lists the ids of the builds in state (500 at most).
func (c coordinator) buildIDs(ctx context.Context, state string) ([]string, error) {
	builds, err := c.api.Builds(ctx, web.ListOptions{State: state, Limit: 500})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, b := range builds {
		ids = append(ids, b.ID)
	}
	return ids, nil
}

func (c coordinator) cancel(ctx context.Context, id string) error { return c.api.Cancel(ctx, id) }
