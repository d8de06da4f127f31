package github

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	gh "github.com/google/go-github/v62/github"
)

// Check runs (DESIGN §3, "Reports to GitHub"): an installation whose
// token may write checks gets check runs; others get commit statuses.

// ErrNoChecksPermission: GitHub refused a check run because the
// installation may not write checks (403).
var ErrNoChecksPermission = errors.New("the installation may not write checks")

// CheckRun is what a check run is made or updated with. Zero values are
// left out (an update keeps what the check run had).
type CheckRun struct {
	Name, HeadSHA          string
	DetailsURL, ExternalID string
	Status                 string // queued, in_progress, completed
	Conclusion             string // with Status completed
	StartedAt, CompletedAt time.Time
	// Title and Summary make the output (both, or none); Text is more
	// Markdown after them.
	Title, Summary, Text string
	Annotations          []Annotation
}

// Annotation marks a line of a file in the check run's output.
type Annotation struct {
	Path           string
	Line           int    // from 1
	Level, Message string // Level: notice, warning or failure
}

// Check-run statuses and conclusions Forge sends (GitHub's names).
const (
	CheckQueued     = "queued"
	CheckInProgress = "in_progress"
	CheckCompleted  = "completed"

	ConclusionSuccess        = "success"
	ConclusionFailure        = "failure"
	ConclusionCancelled      = "cancelled"
	ConclusionTimedOut       = "timed_out"
	ConclusionActionRequired = "action_required"
)

// ChecksAllowed reports whether installation inst's token may write
// checks (its "permissions" say "checks": "write"). It makes the token if
// there is none yet; the answer follows the token, so a permission the
// owner grants is seen within the hour a token lives.
func (a *App) ChecksAllowed(ctx context.Context, inst int64) (bool, error) {
	in, err := a.installation(inst)
	if err != nil {
		return false, err
	}
	err = a.retry.do(ctx, a.log(), "installation token", func(ctx context.Context) (*gh.Response, error) {
		_, err := in.token.Token(ctx)
		return nil, err
	})
	if err != nil {
		return false, fmt.Errorf("installation %d: token: %w", inst, err)
	}
	return in.perms.get("checks") == "write", nil
}

// CreateCheckRun makes a check run and returns its id, retrying as
// SetStatus does. A 403 for want of the permission is
// ErrNoChecksPermission.
func (a *App) CreateCheckRun(ctx context.Context, inst int64, owner, repo string, c CheckRun) (int64, error) {
	in, err := a.installation(inst)
	if err != nil {
		return 0, err
	}
	opts := gh.CreateCheckRunOptions{Name: c.Name, HeadSHA: c.HeadSHA, DetailsURL: optString(c.DetailsURL),
		ExternalID: optString(c.ExternalID), Status: optString(c.Status), Conclusion: optString(c.Conclusion),
		StartedAt: optTime(c.StartedAt), CompletedAt: optTime(c.CompletedAt), Output: c.output()}
	var id int64
	err = a.retry.do(ctx, a.log(), "create check run", func(ctx context.Context) (*gh.Response, error) {
		cr, resp, err := in.client.Checks.CreateCheckRun(ctx, owner, repo, opts)
		id = cr.GetID()
		return resp, err
	})
	if err != nil {
		return 0, fmt.Errorf("create check run %s on %s/%s@%s: %w", c.Name, owner, repo, c.HeadSHA, forbidden(err))
	}
	if id <= 0 {
		return 0, fmt.Errorf("create check run %s on %s/%s@%s: the answer has no id", c.Name, owner, repo, c.HeadSHA)
	}
	return id, nil
}

// UpdateCheckRun changes check run id, retrying as SetStatus does.
func (a *App) UpdateCheckRun(ctx context.Context, inst int64, owner, repo string, id int64, c CheckRun) error {
	in, err := a.installation(inst)
	if err != nil {
		return err
	}
	opts := gh.UpdateCheckRunOptions{Name: c.Name, DetailsURL: optString(c.DetailsURL), ExternalID: optString(c.ExternalID),
		Status: optString(c.Status), Conclusion: optString(c.Conclusion), CompletedAt: optTime(c.CompletedAt), Output: c.output()}
	err = a.retry.do(ctx, a.log(), "update check run", func(ctx context.Context) (*gh.Response, error) {
		_, resp, err := in.client.Checks.UpdateCheckRun(ctx, owner, repo, id, opts)
		return resp, err
	})
	if err != nil {
		return fmt.Errorf("update check run %d (%s) on %s/%s: %w", id, c.Name, owner, repo, forbidden(err))
	}
	return nil
}

// forbidden marks GitHub's 403 for want of permission (not a rate limit,
// which is another error type) as ErrNoChecksPermission.
func forbidden(err error) error {
	var er *gh.ErrorResponse
	if errors.As(err, &er) && er.Response != nil && er.Response.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%w: %w", ErrNoChecksPermission, err)
	}
	return err
}

func (c CheckRun) output() *gh.CheckRunOutput {
	if c.Title == "" {
		return nil
	}
	o := &gh.CheckRunOutput{Title: gh.String(c.Title), Summary: gh.String(c.Summary), Text: optString(c.Text)}
	for _, an := range c.Annotations {
		line := max(an.Line, 1)
		o.Annotations = append(o.Annotations, &gh.CheckRunAnnotation{Path: gh.String(an.Path), StartLine: gh.Int(line),
			EndLine: gh.Int(line), AnnotationLevel: gh.String(an.Level), Message: gh.String(an.Message)})
	}
	return o
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optTime(t time.Time) *gh.Timestamp {
	if t.IsZero() {
		return nil
	}
	return &gh.Timestamp{Time: t}
}

// perms holds what an installation's latest token may do, as GitHub said
// when it made the token.
type perms struct {
	mu sync.Mutex
	m  map[string]string
}

func (p *perms) get(k string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[k]
}

func (p *perms) set(m map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m = m
}

// tokenWatch reads the "permissions" of the installation access tokens
// that pass through it. ghinstallation keeps them too, but reads them
// without its lock (Transport.Permissions), which races with a refresh.
type tokenWatch struct {
	rt    http.RoundTripper
	perms *perms
}

func (t *tokenWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/access_tokens") || resp.StatusCode != http.StatusCreated {
		return resp, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read the installation token: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var tok struct {
		Permissions map[string]string `json:"permissions"`
	}
	if json.Unmarshal(body, &tok) == nil {
		t.perms.set(tok.Permissions)
	}
	return resp, nil
}
