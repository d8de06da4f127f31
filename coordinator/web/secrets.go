package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// A repository's secrets (DESIGN §3, §5): set, listed (names and times,
// never values) and deleted by people with admin permission on the
// repository on GitHub, and by the admin token.

// SecretView is a secret as the API shows it: never its value.
type SecretView struct {
	Name      string    `json:"name"`
	Updated   time.Time `json:"updated"`
	UpdatedBy string    `json:"updated_by,omitempty"`
}

// GitHub's rules for names: an owner of letters, digits and single
// hyphens; a repository of letters, digits, '.', '-' and '_'.
var (
	ownerRE = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$`)
	repoRE  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)
)

// errSecretsDisabled: the coordinator runs without a secrets key.
var errSecretsDisabled = errors.New("secrets are disabled: this coordinator has no secrets key (--secrets-key-file)")

// repoAdmin checks that p has admin permission on the repository of the
// path, answering the refusal itself; ok is false when it did. A
// repository p may not read is as unknown as one that does not exist.
func (a *API) repoAdmin(w http.ResponseWriter, r *http.Request, p *auth.Principal, api bool) (owner, repo string, ok bool) {
	owner, repo = r.PathValue("owner"), r.PathValue("repo")
	fail := func(code int, err error) {
		if api {
			httpError(w, code, "%v", err)
		} else {
			a.errorPage(w, r, code, err)
		}
	}
	if !ownerRE.MatchString(owner) || !repoRE.MatchString(repo) || repo == "." || repo == ".." {
		fail(http.StatusBadRequest, fmt.Errorf("repository %q: want OWNER/REPO as GitHub names them", owner+"/"+repo))
		return "", "", false
	}
	err := a.auth.Need(r.Context(), p, owner, repo, a.repoPublic(r.Context(), owner, repo), coordinator.Admin)
	switch {
	case errors.Is(err, auth.ErrHidden):
		fail(http.StatusNotFound, fmt.Errorf("no repository %s/%s", owner, repo))
		return "", "", false
	case err != nil:
		a.refuse(w, r, err, api)
		return "", "", false
	case a.cfg.Secrets == nil:
		fail(http.StatusServiceUnavailable, errSecretsDisabled)
		return "", "", false
	}
	return owner, repo, true
}

// repoPublic says whether owner/repo is public, as its latest build
// recorded: closed when there is none.
func (a *API) repoPublic(ctx context.Context, owner, repo string) bool {
	b, err := a.newestBuild(ctx, owner, repo)
	return err == nil && b != nil && b.Public
}

// newestBuild is owner/repo's newest build, whose record says whether the
// repository is public; nil when Forge never built it.
func (a *API) newestBuild(ctx context.Context, owner, repo string) (*coordinator.Build, error) {
	bs, err := a.cfg.Store.ListBuilds(ctx, store.ListOptions{Owner: owner, Repo: repo, Limit: 1})
	if err != nil || len(bs) == 0 {
		return nil, err
	}
	return bs[0], nil
}

func (a *API) listSecrets(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	owner, repo, ok := a.repoAdmin(w, r, p, true)
	if !ok {
		return
	}
	ss, err := a.cfg.Secrets.List(r.Context(), owner, repo)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := make([]SecretView, 0, len(ss))
	for _, s := range ss {
		out = append(out, SecretView{Name: s.Name, Updated: s.Updated, UpdatedBy: s.UpdatedBy})
	}
	writeJSON(w, http.StatusOK, out)
}

// putSecret sets the secret of the path to the request's body, as it is.
func (a *API) putSecret(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	owner, repo, ok := a.repoAdmin(w, r, p, true)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if err := a.setSecret(r, p, owner, repo, name, r.Body); err != nil {
		httpError(w, secretErrorCode(err), "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, SecretView{Name: name, Updated: time.Now().UTC(), UpdatedBy: p.Name()})
}

// setSecret reads a value from body and sets it as owner/repo's secret
// name, for the API and the page's form alike.
func (a *API) setSecret(r *http.Request, p *auth.Principal, owner, repo, name string, body io.Reader) error {
	value, err := readSecretValue(name, body)
	if err == nil {
		err = a.cfg.Secrets.Set(r.Context(), owner, repo, name, value, p.Name())
	}
	if err != nil {
		return err
	}
	a.log.Info("secret set", "repo", owner+"/"+repo, "name", name, "by", p.Name())
	return nil
}

// secretErrorCode is the status for a failure to set or delete a secret:
// 400 for a bad name or value.
func secretErrorCode(err error) int {
	if errors.Is(err, coordinator.ErrBadSecret) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// readSecretValue reads a value of at most wire.MaxSecretSize bytes; a
// longer one is refused without reading it all.
func readSecretValue(name string, body io.Reader) ([]byte, error) {
	if err := wire.ValidSecretName(name); err != nil {
		return nil, coordinator.BadSecret(err)
	}
	value, err := io.ReadAll(io.LimitReader(body, wire.MaxSecretSize+1))
	if err != nil {
		return nil, fmt.Errorf("read the value: %w", err)
	}
	if len(value) > wire.MaxSecretSize {
		return nil, coordinator.BadSecret(fmt.Errorf("secret %s: the value is larger than 64 KiB (%d bytes)", name, wire.MaxSecretSize))
	}
	return value, nil
}

func (a *API) deleteSecret(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	owner, repo, ok := a.repoAdmin(w, r, p, true)
	if !ok {
		return
	}
	name := r.PathValue("name")
	err := a.cfg.Secrets.Delete(r.Context(), owner, repo, name)
	switch {
	case errors.Is(err, coordinator.ErrBadSecret):
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	case errors.Is(err, coordinator.ErrNoSecret):
		httpError(w, http.StatusNotFound, "%s/%s has no secret %s", owner, repo, name)
		return
	case err != nil:
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	a.log.Info("secret deleted", "repo", owner+"/"+repo, "name", name, "by", p.Name())
	w.WriteHeader(http.StatusNoContent)
}

// secretsPage lists a repository's secrets, with a form to set one and a
// button to delete each.
func (a *API) secretsPage(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if owner, repo, ok := a.repoAdmin(w, r, p, false); ok {
		a.secrets(w, r, p, owner, repo, "")
	}
}

// secrets renders the secrets page of owner/repo, whose admin p is.
func (a *API) secrets(w http.ResponseWriter, r *http.Request, p *auth.Principal, owner, repo, message string) {
	ss, err := a.cfg.Secrets.List(r.Context(), owner, repo)
	if err != nil {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	d := a.data(p, "Secrets of "+owner+"/"+repo)
	d.Owner, d.Repo, d.Secrets, d.Message = owner, repo, ss, message
	a.render(w, http.StatusOK, "secrets", d)
}

// setSecretForm is the secrets page's form. A textarea sends line breaks
// as CRLF: they are made LF again.
func (a *API) setSecretForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	owner, repo, ok := a.repoAdmin(w, r, p, false)
	if !ok {
		return
	}
	name := strings.TrimSpace(r.PostFormValue("name"))
	if err := a.setSecret(r, p, owner, repo, name, strings.NewReader(strings.ReplaceAll(r.PostFormValue("value"), "\r\n", "\n"))); err != nil {
		a.errorPage(w, r, secretErrorCode(err), err)
		return
	}
	a.secrets(w, r, p, owner, repo, "Secret "+name+" set.")
}

func (a *API) deleteSecretForm(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	owner, repo, ok := a.repoAdmin(w, r, p, false)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if err := a.cfg.Secrets.Delete(r.Context(), owner, repo, name); err != nil && !errors.Is(err, coordinator.ErrNoSecret) {
		a.errorPage(w, r, secretErrorCode(err), err)
		return
	}
	a.log.Info("secret deleted", "repo", owner+"/"+repo, "name", name, "by", p.Name())
	http.Redirect(w, r, "/repos/"+owner+"/"+repo+"/secrets", http.StatusSeeOther)
}
