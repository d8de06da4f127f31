package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// coordinator is the deployed coordinator's HTTP API, at its published
// port on this node (coordinator/http.go serves it).
type coordinator struct {
	base string // http://127.0.0.1:PORT
	hc   *http.Client
}

// maxAnswer bounds what is read of an answer: 500 builds are well under it.
const maxAnswer = 8 << 20

func (c coordinator) do(ctx context.Context, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		return nil, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return body, nil
}

// healthy: GET /healthz answers ok.
func (c coordinator) healthy(ctx context.Context) bool {
	body, err := c.do(ctx, http.MethodGet, "/healthz")
	return err == nil && strings.TrimRight(string(body), "\n") == "ok"
}

// agentNodes lists the nodes whose agent is connected (GET /api/agents).
func (c coordinator) agentNodes(ctx context.Context) ([]string, error) {
	body, err := c.do(ctx, http.MethodGet, "/api/agents")
	if err != nil {
		return nil, err
	}
	return decodeAgents(body)
}

// decodeAgents reads the node ids of GET /api/agents, sorted, once each.
func decodeAgents(body []byte) ([]string, error) {
	var agents []struct {
		NodeID string `json:"node_id"`
	}
	if err := json.Unmarshal(body, &agents); err != nil {
		return nil, fmt.Errorf("GET /api/agents: %w", err)
	}
	var nodes []string
	for _, a := range agents {
		nodes = append(nodes, a.NodeID)
	}
	slices.Sort(nodes)
	return slices.Compact(nodes), nil
}

// unfinished lists the ids of the builds still queued or running (GET
// /api/builds); a coordinator that does not answer has none.
func (c coordinator) unfinished(ctx context.Context) []string {
	var ids []string
	for _, state := range []string{"queued", "running"} {
		body, err := c.do(ctx, http.MethodGet, "/api/builds?state="+state+"&limit=500")
		if err != nil {
			continue
		}
		found, _ := decodeBuildIDs(body)
		ids = append(ids, found...)
	}
	return ids
}

// decodeBuildIDs reads the ids of a GET /api/builds answer.
func decodeBuildIDs(body []byte) ([]string, error) {
	var builds []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &builds); err != nil {
		return nil, fmt.Errorf("GET /api/builds: %w", err)
	}
	var ids []string
	for _, b := range builds {
		ids = append(ids, b.ID)
	}
	return ids, nil
}

func (c coordinator) cancel(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/api/builds/"+url.PathEscape(id)+"/cancel")
	return err
}
