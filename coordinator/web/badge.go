package web

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
)

// badgeLook is what a badge says for a build state, and its colour.
type badgeLook struct{ text, colour string }

var (
	badgeLooks = map[coordinator.State]badgeLook{
		coordinator.Success: {"passing", "#2da44e"},
		coordinator.Failure: {"failing", "#cf222e"},
	}
	badgeNone = badgeLook{"no builds", "#6e7781"}
)

// badge serves GET /badge/{owner}/{repo}.svg?branch=B: whether the
// newest build of the branch that passed or failed passed (pushes, runs
// and API builds: a pull request, maybe a fork's, does not speak for a
// branch), or of any branch without ?branch. A build that ended in error
// (cancelled, superseded, timed out, an infrastructure fault) says
// nothing of the code and leaves the badge as it was. A repository Forge
// never built, and a private one the requester may not read, get the
// same 404.
func (a *API) badge(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	w.Header().Set("Cache-Control", "no-cache, max-age=0") // GitHub's image proxy keeps it otherwise
	owner, repo := r.PathValue("owner"), r.PathValue("repo")
	unknown := func() {
		httpError(w, http.StatusNotFound, "Forge has no badge for %s/%s (a badge is /badge/OWNER/REPO.svg?branch=B of a repository Forge builds)", owner, repo)
	}
	repo, ok := strings.CutSuffix(repo, ".svg")
	if !ok {
		unknown()
		return
	}
	if err := a.auth.NeedSignIn(p, true); err != nil {
		a.refuse(w, r, err, true)
		return
	}
	ctx := r.Context()
	// Whether the repository is public is what its newest build says.
	newest, err := a.newestBuild(ctx, owner, repo)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if newest == nil {
		unknown()
		return
	}
	if err := a.auth.Need(ctx, p, owner, repo, newest.Public, coordinator.Read); err != nil {
		if errors.Is(err, auth.ErrHidden) {
			unknown()
			return
		}
		a.refuse(w, r, err, true)
		return
	}
	last, err := a.cfg.Store.ListBuilds(ctx, store.ListOptions{Owner: owner, Repo: repo, Branch: r.URL.Query().Get("branch"),
		NoPullRequest: true, States: []coordinator.State{coordinator.Success, coordinator.Failure}, Limit: 1})
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	look := badgeNone
	if len(last) > 0 {
		look = badgeLooks[last[0].State]
	}
	w.Header().Set("Content-Type", "image/svg+xml; charset=utf-8")
	w.Write([]byte(badgeSVG("forge", look)))
}

// badgeSVG draws a flat badge: label on grey, the state on its colour.
// Only Forge's own words go in it, never a name from the request.
func badgeSVG(label string, look badgeLook) string {
	// Verdana 11px averages about 7 px a character; 6 px of padding a side.
	lw, rw := 7*len(label)+12, 7*len(look.text)+12
	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="%[1]d" height="20" role="img" aria-label="%[3]s: %[4]s">`+
		`<title>%[3]s: %[4]s</title>`+
		`<linearGradient id="s" x2="0" y2="100%%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>`+
		`<clipPath id="r"><rect width="%[1]d" height="20" rx="3" fill="#fff"/></clipPath>`+
		`<g clip-path="url(#r)"><rect width="%[2]d" height="20" fill="#555"/><rect x="%[2]d" width="%[5]d" height="20" fill="%[6]s"/><rect width="%[1]d" height="20" fill="url(#s)"/></g>`+
		`<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">`+
		`<text x="%[7]d" y="15" fill="#010101" fill-opacity=".3">%[3]s</text><text x="%[7]d" y="14">%[3]s</text>`+
		`<text x="%[8]d" y="15" fill="#010101" fill-opacity=".3">%[4]s</text><text x="%[8]d" y="14">%[4]s</text></g></svg>`+"\n",
		lw+rw, lw, label, look.text, rw, look.colour, lw/2, lw+rw/2)
}
