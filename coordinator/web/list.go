package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
)

// listView is the builds page: its filters as the form shows them, its
// rows, and the links to the next page.
type listView struct {
	Repo, Branch, PR, State string // the form's values, as given
	States                  []coordinator.State
	Filtered                bool
	Before                  string
	Rows                    []listRow
	NewestURL, OlderURL     string
	Live                    bool // the first page: its script refreshes it
}

// listRow is one build of the list.
type listRow struct {
	*coordinator.Build
	Ref, Duration, Node string
}

// pageLimit is the builds page's default page size.
const pageLimit = 50

// listQuery reads the builds page's query: ?repo=owner/repo&branch=&pr=
// &state=&before=&limit=. Errors name the parameter.
func listQuery(q url.Values) (store.ListOptions, *listView, error) {
	v := &listView{Repo: strings.TrimSpace(q.Get("repo")), Branch: strings.TrimSpace(q.Get("branch")),
		PR: strings.TrimSpace(q.Get("pr")), State: q.Get("state"), Before: q.Get("before"), States: coordinator.States}
	o := store.ListOptions{Branch: v.Branch, State: coordinator.State(v.State), Before: v.Before, Limit: pageLimit}
	if owner, repo, ok := strings.Cut(v.Repo, "/"); ok {
		o.Owner, o.Repo = owner, repo
	} else {
		o.Repo = v.Repo
	}
	pr, limit, err := listNumbers(q, "pr", o.State)
	if err != nil {
		return o, v, err
	}
	o.PullRequest = pr
	if limit > 0 {
		o.Limit = store.ClampLimit(limit)
	}
	v.Filtered = v.Repo != "" || v.Branch != "" || v.PR != "" || v.State != ""
	v.Live = v.Before == ""
	return o, v, nil
}

// listNumbers reads what the builds page and GET /api/builds check alike:
// the pull request (in the parameter prName) and the limit, positive
// numbers or absent (0), and the state filter.
func listNumbers(q url.Values, prName string, st coordinator.State) (pr, limit int, err error) {
	number := func(name, want string) int {
		s := strings.TrimPrefix(strings.TrimSpace(q.Get(name)), "#")
		if s == "" || err != nil {
			return 0
		}
		n, aerr := strconv.Atoi(s)
		if aerr != nil || n < 1 {
			err = fmt.Errorf("%s %q: want %s", name, q.Get(name), want)
		}
		return n
	}
	pr, limit = number(prName, "a pull request's number"), number("limit", "a positive number")
	if err == nil && st != "" && !st.Valid() {
		err = fmt.Errorf("state %q: want one of queued, running, success, failure, error", st)
	}
	return pr, limit, err
}

// url is the builds page with v's filters, limit and before.
func (v *listView) url(limit int, before string) string {
	q := url.Values{}
	for k, s := range map[string]string{"repo": v.Repo, "branch": v.Branch, "pr": v.PR, "state": v.State, "before": before} {
		if s != "" {
			q.Set(k, s)
		}
	}
	if limit != pageLimit {
		q.Set("limit", strconv.Itoa(limit))
	}
	if len(q) == 0 {
		return "/"
	}
	return "/?" + q.Encode()
}

func (a *API) indexPage(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if err := a.auth.NeedSignIn(p, true); err != nil {
		a.refuse(w, r, err, false)
		return
	}
	o, v, err := listQuery(r.URL.Query())
	if err != nil {
		a.errorPage(w, r, http.StatusBadRequest, err)
		return
	}
	bs, err := a.visible(r.Context(), p, o)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, auth.ErrHidden):
		a.errorPage(w, r, http.StatusBadRequest, fmt.Errorf("before %q: no such build", o.Before))
		return
	case errors.Is(err, auth.ErrBadCredential):
		a.refuse(w, r, err, false)
		return
	case err != nil:
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	now, hosts := time.Now(), a.hostnames()
	for _, b := range bs {
		v.Rows = append(v.Rows, listRow{Build: b, Ref: refOf(b), Duration: elapsed(b, now), Node: nodeName(hosts, b.NodeID)})
	}
	if v.Before != "" {
		v.NewestURL = v.url(o.Limit, "")
	}
	if len(bs) == o.Limit {
		v.OlderURL = v.url(o.Limit, bs[len(bs)-1].ID)
	}
	d := a.data(p, "Builds")
	d.List = v
	a.render(w, http.StatusOK, "index", d)
}

// hostnames maps the connected agents' nodes to their hosts' names.
func (a *API) hostnames() map[string]string {
	m := map[string]string{}
	for _, ag := range a.cfg.Agents.Agents() {
		m[ag.NodeID] = ag.Hostname
	}
	return m
}

// nodeName is how pages name a node: its host when its agent is
// connected, else the start of its id.
func nodeName(hosts map[string]string, node string) string {
	if h := hosts[node]; h != "" {
		return h
	}
	if len(node) > 12 {
		return node[:12]
	}
	return node
}

// refOf is what a build builds, as the list says it: "#12" or the branch.
func refOf(b *coordinator.Build) string {
	if b.PullRequest > 0 {
		return "#" + strconv.Itoa(b.PullRequest)
	}
	return b.Branch
}

// elapsed is how long b ran (or has been running), "" before it started.
func elapsed(b *coordinator.Build, now time.Time) string {
	if b.Started.IsZero() {
		return ""
	}
	end := b.Finished
	if end.IsZero() {
		end = now
	}
	return duration(end.Sub(b.Started))
}

// duration writes d as people read it: "45s", "3m 05s", "1h 02m".
func duration(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	h, m, s := int(d/time.Hour), int(d/time.Minute)%60, int(d/time.Second)%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh %02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}
