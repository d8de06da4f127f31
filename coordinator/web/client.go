package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/forge-ci/forge/coordinator/agents"
)

// Client speaks the API that API serves: the people's commands (forge
// builds, logs, cancel, approve, rerun, agents [revoke|allow]) use it.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// Errors of the API, by what the server answered; an *Error wraps one.
var (
	ErrUnauthorized = errors.New("the server refused the credentials")
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
)

// Error is an answer of the API other than success.
type Error struct {
	Status  int    // the HTTP status
	Message string // the server's own words
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

// Unwrap classifies the answer.
func (e *Error) Unwrap() error {
	switch e.Status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return ErrUnauthorized
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	}
	return nil
}

// NewClient returns a client of the coordinator at server (its public URL);
// token, when set, goes in every request as a bearer token. hc nil means
// http.DefaultClient.
func NewClient(server, token string, hc *http.Client) (*Client, error) {
	if server == "" {
		return nil, errors.New("no server: give the coordinator's URL with --server or FORGE_SERVER")
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server %q: want the coordinator's http(s) URL, e.g. https://forge.example.com", server)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	u.Path = strings.TrimRight(u.Path, "/")
	return &Client{base: u, token: token, http: hc}, nil
}

// ListOptions filter Builds; zero values do not filter.
type ListOptions struct {
	Owner, Repo, Branch, State, Before string
	PullRequest, Limit                 int
}

// Builds lists builds, newest first.
func (c *Client) Builds(ctx context.Context, o ListOptions) ([]BuildView, error) {
	q := url.Values{}
	for k, v := range map[string]string{"owner": o.Owner, "repo": o.Repo, "branch": o.Branch, "state": o.State, "before": o.Before} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for k, n := range map[string]int{"pull_request": o.PullRequest, "limit": o.Limit} {
		if n > 0 {
			q.Set(k, strconv.Itoa(n))
		}
	}
	var out []BuildView
	return out, c.getJSON(ctx, "/api/builds", q, &out)
}

// Build returns one build.
func (c *Client) Build(ctx context.Context, id string) (*BuildView, error) {
	var out BuildView
	if err := c.getJSON(ctx, "/api/builds/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Log copies the build's output to w; with follow, until the build ends
// or ctx does.
func (c *Client) Log(ctx context.Context, id string, follow bool, w io.Writer) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, "/api/builds/"+url.PathEscape(id)+"/log", q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Cancel asks the coordinator to cancel a build.
func (c *Client) Cancel(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodPost, "/api/builds/"+url.PathEscape(id)+"/cancel", nil)
}

// call sends a request whose answer has nothing to read but its status.
func (c *Client) call(ctx context.Context, method, path string, body io.Reader) error {
	resp, err := c.send(ctx, method, path, nil, body)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Approve lets a build that awaits approval run, and returns it; a build
// that does not await approval gives an *Error with status 409.
func (c *Client) Approve(ctx context.Context, id string) (*BuildView, error) {
	var b BuildView
	if err := c.postJSON(ctx, "/api/builds/"+url.PathEscape(id)+"/approve", &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Rerun starts a new build of the build's commit and action, and returns
// it; a build that cannot be re-run gives an *Error (422) saying why.
func (c *Client) Rerun(ctx context.Context, id string) (*BuildView, error) {
	var b BuildView
	if err := c.postJSON(ctx, "/api/builds/"+url.PathEscape(id)+"/rerun", &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Health is nil when the coordinator answers GET /healthz with ok.
func (c *Client) Health(ctx context.Context) error {
	resp, err := c.do(ctx, http.MethodGet, "/healthz", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil {
		return err
	}
	if got := strings.TrimRight(string(body), "\n"); got != "ok" {
		return fmt.Errorf("/healthz answered %q, not ok", got)
	}
	return nil
}

// Agents lists the connected agents.
func (c *Client) Agents(ctx context.Context) ([]agents.AgentInfo, error) {
	var out []agents.AgentInfo
	return out, c.getJSON(ctx, "/api/agents", nil, &out)
}

// RevokeAgent revokes node's agent: its session is closed and its
// certificates and joins are refused until AllowAgent. It needs a Forge
// admin's credential.
func (c *Client) RevokeAgent(ctx context.Context, node string) error {
	var out AgentAccess
	if err := c.postJSON(ctx, "/api/agents/"+url.PathEscape(node)+"/revoke", &out); err != nil {
		return err
	}
	if !out.Revoked || out.NodeID != node {
		return fmt.Errorf("revoke node %s: the server answered %+v", node, out)
	}
	return nil
}

// AllowAgent lifts node's revocation; it reports whether the node was
// revoked. The node's agent must join again with the join token.
func (c *Client) AllowAgent(ctx context.Context, node string) (bool, error) {
	var out AgentAccess
	if err := c.postJSON(ctx, "/api/agents/"+url.PathEscape(node)+"/allow", &out); err != nil {
		return false, err
	}
	if out.Revoked || out.NodeID != node || out.WasRevoked == nil {
		return false, fmt.Errorf("allow node %s: the server answered %+v", node, out)
	}
	return *out.WasRevoked, nil
}

func (c *Client) postJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, http.MethodPost, path, nil)
	if err != nil {
		return err
	}
	return decodeAnswer(resp, path, v)
}

func (c *Client) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path, q)
	if err != nil {
		return err
	}
	return decodeAnswer(resp, path, v)
}

// decodeAnswer reads a successful answer's JSON into v.
func decodeAnswer(resp *http.Response, path string, v any) error {
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(v); err != nil {
		return fmt.Errorf("%s: the answer is not the API's JSON: %w", path, err)
	}
	return nil
}

// maxAnswer bounds a JSON answer read by the client.
const maxAnswer = 32 << 20

// do sends one request; an answer that is not 2xx becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	return c.send(ctx, method, path, q, nil)
}

// send is do with a request body (nil: none).
func (c *Client) send(ctx context.Context, method, path string, q url.Values, content io.Reader) (*http.Response, error) {
	// path is escaped already (url.PathEscape of ids): keep it as it is.
	u := *c.base
	unescaped, err := url.PathUnescape(path)
	if err != nil {
		return nil, fmt.Errorf("path %q: %w", path, err)
	}
	u.Path, u.RawPath = c.base.Path+unescaped, c.base.EscapedPath()+path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), content)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	msg := body.Message
	if msg == "" {
		msg = body.Error
	}
	return nil, &Error{Status: resp.StatusCode, Message: msg}
}
