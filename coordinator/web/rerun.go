package web

import (
	"errors"
	"net/http"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
)

// rerunBuild starts a new build of the build's SHA and action: 201 with
// the new build; 422 saying why when it cannot be re-run (not from
// GitHub, no .forge.yml or action at that commit any more); 501 without a
// GitHub App.
func (a *API) rerunBuild(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Write, true)
	if b == nil {
		return
	}
	nb, code, err := a.rerun(r, b, p)
	if err != nil {
		httpError(w, code, "%v", err)
		return
	}
	writeJSON(w, http.StatusCreated, viewOf(nb))
}

// rerunForm is the build page's re-run button: it goes to the new build.
func (a *API) rerunForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Write, false)
	if b == nil {
		return
	}
	nb, code, err := a.rerun(r, b, p)
	if err != nil {
		a.errorPage(w, r, code, err)
		return
	}
	http.Redirect(w, r, "/builds/"+nb.ID, http.StatusSeeOther)
}

// rerun re-runs b for p, once p's write permission is known; on failure
// it gives the status to answer with.
func (a *API) rerun(r *http.Request, b *coordinator.Build, p *auth.Principal) (*coordinator.Build, int, error) {
	if a.cfg.Reruns == nil {
		return nil, http.StatusNotImplemented, errors.New("this coordinator has no GitHub App (--github-app-id): builds cannot be re-run")
	}
	nb, err := a.cfg.Reruns.Rerun(r.Context(), b, p.Name())
	switch {
	case errors.Is(err, coordinator.ErrNotRerunnable):
		return nil, http.StatusUnprocessableEntity, err
	case err != nil:
		a.log.Error("re-run", "build", b.ID, "by", p.Name(), "err", err)
		return nil, http.StatusInternalServerError, err
	}
	a.log.Info("build re-run", "build", nb.ID, "rerun_of", b.ID, "by", p.Name())
	return nb, 0, nil
}
