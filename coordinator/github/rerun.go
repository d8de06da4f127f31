package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
)

// Re-runs (DESIGN §3): GitHub's "Re-run" of a check run or of a whole
// check suite, the build page's button, POST /api/builds/{id}/rerun and
// `forge rerun ID` each start a new build of the same SHA and action,
// linked to the build it re-runs.

// Why a build cannot be re-run; each is a coordinator.ErrNotRerunnable,
// and so is an invalid .forge.yml's error from Rerun.
var (
	// ErrNotFromGitHub: the build did not come from GitHub (forge run),
	// so there is no source to fetch again.
	ErrNotFromGitHub = fmt.Errorf("%w: it did not come from GitHub, which has its source", coordinator.ErrNotRerunnable)
	// ErrNoConfig: the commit has no .forge.yml (any more).
	ErrNoConfig = fmt.Errorf("%w: no %s", coordinator.ErrNotRerunnable, ConfigFile)
	// ErrNoAction: the commit's .forge.yml has no action of that name
	// (any more).
	ErrNoAction = fmt.Errorf("%w: no such action", coordinator.ErrNotRerunnable)
)

// Records is what Forge reads of its builds to re-run them
// (*store.Store). The look-ups give store.ErrNotFound.
type Records interface {
	Build(ctx context.Context, id string) (*coordinator.Build, error)
	// CheckRun is a check run Forge made on owner/repo.
	CheckRun(ctx context.Context, owner, repo string, id int64) (*coordinator.CheckRun, error)
	// CommitBuilds are the builds of owner/repo at sha, newest first.
	CommitBuilds(ctx context.Context, owner, repo, sha string) ([]*coordinator.Build, error)
	LatestByKey(ctx context.Context, key string) (*coordinator.Build, error)
}

var _ Records = (*store.Store)(nil)

// Rerun starts a new build of b's SHA and action for who (a GitHub
// login), with .forge.yml read again at that SHA. The new build is as
// trusted as b was: an untrusted one waits for approval again. A commit
// whose .forge.yml is gone or invalid, or lacks the action now, gets an
// error report on GitHub, and Rerun an error that says so (ErrNoConfig,
// ErrNoAction, a *config.Error; all coordinator.ErrNotRerunnable).
func (f *Forge) Rerun(ctx context.Context, b *coordinator.Build, who string) (*coordinator.Build, error) {
	f.init()
	if b.InstallationID == 0 {
		return nil, fmt.Errorf("re-run build %s: %w", b.ID, ErrNotFromGitHub)
	}
	inst, owner, repo, sha := b.InstallationID, b.Owner, b.Repo, b.SHA
	data, cfg, found, invalid, err := f.readConfig(ctx, inst, owner, repo, sha)
	if err != nil {
		return nil, fmt.Errorf("re-run build %s: %w", b.ID, err)
	}
	if !found {
		f.Reporter.reportProblem(inst, owner, repo, sha, b.Action, noConfig(sha))
		return nil, fmt.Errorf("re-run build %s: %w at %s: the repository has none there any more", b.ID, ErrNoConfig, short(sha))
	}
	if invalid != nil {
		f.Reporter.reportProblem(inst, owner, repo, sha, b.Action, invalidConfig(invalid))
		return nil, fmt.Errorf("re-run build %s: %w: %w", b.ID, coordinator.ErrNotRerunnable, invalid)
	}
	if _, ok := cfg.Actions[b.Action]; !ok {
		msg := fmt.Sprintf("nothing to re-run: %s at %s has no action %q", ConfigFile, short(sha), b.Action)
		f.Reporter.reportProblem(inst, owner, repo, sha, b.Action, problem{desc: msg, title: "No action " + b.Action,
			summary: "Forge cannot re-run this commit: " + mdEscape(msg) + "."})
		return nil, fmt.Errorf("re-run build %s: %w: %s", b.ID, ErrNoAction, msg)
	}
	s := b.Subject
	s.RerunOf, s.RerunBy = b.ID, who
	s.Key = f.rerunKey(ctx, b)
	s.NeedsApproval = f.RequireApproval.NeedsApproval(s) // "" is ApproveForks
	nb, err := f.Builds.Submit(ctx, coordinator.Request{Subject: s, Config: cfg, ConfigText: string(data),
		Source: f.source(inst, owner, repo, sha)})
	if err != nil {
		f.Reporter.reportProblem(inst, owner, repo, sha, b.Action, notQueued)
		return nil, fmt.Errorf("re-run build %s: %w", b.ID, err)
	}
	f.Log.Info("re-run submitted", "build", nb.ID, "rerun_of", b.ID, "by", who, "repo", owner+"/"+repo, "sha", sha,
		"action", nb.Action, "needs_approval", nb.NeedsApproval)
	return nb, nil
}

// rerunKey is the supersede key of a re-run of b: b's when b's commit is
// still the newest built under it, so that the re-run replaces a build of
// the same commit still going; else none, so that re-running an old commit
// of a pull request never cancels the build of its newer head.
func (f *Forge) rerunKey(ctx context.Context, b *coordinator.Build) string {
	if b.Key == "" || f.Records == nil {
		return ""
	}
	latest, err := f.Records.LatestByKey(ctx, b.Key)
	if err != nil || latest.SHA != b.SHA {
		return ""
	}
	return b.Key
}

// rerunEvent re-runs what a check_run or check_suite "rerequested" event
// names: the build of that check run, or the newest build of each action
// at that commit.
func (f *Forge) rerunEvent(ctx context.Context, ev Event) error {
	if f.Records == nil {
		return errors.New("re-run: this coordinator keeps no build records")
	}
	var olds []*coordinator.Build
	switch ev.Kind {
	case KindRerunCheckRun:
		cr, err := f.Records.CheckRun(ctx, ev.Owner, ev.Repo, ev.CheckRunID)
		if errors.Is(err, store.ErrNotFound) {
			f.Log.Info("re-run of a check run Forge did not make: ignored", "delivery", ev.Delivery, "check_run", ev.CheckRunID)
			return nil
		}
		if err != nil {
			return err
		}
		b, err := f.Records.Build(ctx, cr.BuildID)
		if err != nil {
			return err
		}
		olds = append(olds, b)
	case KindRerunCheckSuite:
		bs, err := f.Records.CommitBuilds(ctx, ev.Owner, ev.Repo, ev.SHA)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, b := range bs { // newest first
			if !seen[b.Action] {
				seen[b.Action] = true
				olds = append(olds, b)
			}
		}
	}
	var errs []error
	for _, b := range olds {
		nb, err := f.Rerun(ctx, b, ev.Sender)
		switch {
		case errors.Is(err, coordinator.ErrNotRerunnable):
			// Reported to GitHub already: the event's work is done.
			f.Log.Info("re-run refused", "delivery", ev.Delivery, "build", b.ID, "err", err)
		case err != nil:
			errs = append(errs, err)
		default:
			f.Log.Info("re-run from GitHub", "delivery", ev.Delivery, "build", nb.ID, "rerun_of", b.ID, "by", ev.Sender)
		}
	}
	if len(olds) == 0 {
		f.Log.Info("re-run of a commit Forge never built: ignored", "delivery", ev.Delivery, "sha", ev.SHA)
	}
	return errors.Join(errs...)
}

// checkEvent is what Forge reads of a check_run or check_suite payload.
// These are decoded with a type of Forge's own rather than go-github's:
// go-github's also parses timestamps of the app and the suite that Forge
// never reads, and GitHub has sent them in other forms
// ("2018-04-25 20:42:10", see testdata/github-webhooks).
type checkEvent struct {
	Action   string     `json:"action"`
	CheckRun *checkItem `json:"check_run"`
	Suite    *checkItem `json:"check_suite"`
	Repo     struct {
		Name    string `json:"name"`
		Private *bool  `json:"private"`
		Owner   struct {
			Login string `json:"login"`
		} `json:"owner"`
	} `json:"repository"`
	Installation struct {
		ID int64 `json:"id"`
	} `json:"installation"`
	Sender struct {
		Login string `json:"login"`
	} `json:"sender"`
}

type checkItem struct {
	ID         int64  `json:"id"`
	HeadSHA    string `json:"head_sha"`
	HeadBranch string `json:"head_branch"`
	App        struct {
		ID int64 `json:"id"`
	} `json:"app"`
	Suite *checkItem `json:"check_suite"`
}

// decodeCheck reads a check_run or check_suite event: only "rerequested"
// (GitHub's "Re-run", "Re-run all checks") is work.
func decodeCheck(ev Event, body []byte) (Event, bool, string, error) {
	var p checkEvent
	if err := json.Unmarshal(body, &p); err != nil {
		return ev, false, "", err
	}
	ev.Action = p.Action
	if ev.Action != "rerequested" {
		return ev, false, "ignored: " + ev.Name + "." + ev.Action, nil
	}
	item := p.Suite
	ev.Kind = KindRerunCheckSuite
	if ev.Name == "check_run" {
		item, ev.Kind = p.CheckRun, KindRerunCheckRun
	}
	if item == nil {
		return ev, false, "", fmt.Errorf("no %s in the payload", ev.Name)
	}
	ev.App, ev.SHA, ev.Branch = item.App.ID, item.HeadSHA, item.HeadBranch
	if ev.Kind == KindRerunCheckRun {
		ev.CheckRunID = item.ID
		if item.Suite != nil {
			ev.Branch = item.Suite.HeadBranch
		}
		if ev.CheckRunID <= 0 {
			return ev, false, "", errors.New("no check run id")
		}
	}
	ev.Owner, ev.Repo = p.Repo.Owner.Login, p.Repo.Name
	ev.Public = p.Repo.Private != nil && !*p.Repo.Private
	ev.Installation, ev.Sender = p.Installation.ID, p.Sender.Login
	if err := checkRepo(ev.Owner, ev.Repo); err != nil {
		return ev, false, "", err
	}
	if !shaRE.MatchString(ev.SHA) {
		return ev, false, "", fmt.Errorf("head sha %q is not a commit id", ev.SHA)
	}
	return ev, true, "", nil
}
