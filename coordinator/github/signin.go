package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	gh "github.com/google/go-github/v62/github"

	"github.com/forge-ci/forge/coordinator"
)

// DefaultWeb is GitHub's web base (--github-web): the OAuth pages.
const DefaultWeb = "https://github.com"

var (
	// ErrSignIn: GitHub did not trade the sign-in code for a token.
	ErrSignIn = errors.New("GitHub sign-in failed")
)

// SignIn is the GitHub App's OAuth client: people sign in to Forge
// through GitHub's web flow, and their token asks GitHub what they may do.
type SignIn struct {
	clientID, secret string
	web              *url.URL // authorize and token endpoints
	api              string   // API base, as for the App
	hc               *http.Client
}

// NewSignIn returns the OAuth client of the App. web is GitHub's web base
// ("" is DefaultWeb, or https://HOST for GitHub Enterprise), api the API
// base ("" is DefaultAPI).
func NewSignIn(clientID, clientSecret, web, api string, hc *http.Client) (*SignIn, error) {
	if clientID == "" || clientSecret == "" {
		return nil, errors.New("github sign-in: a client id and a client secret are both needed")
	}
	if web == "" {
		web = DefaultWeb
	}
	if api == "" {
		api = DefaultAPI
	}
	u, err := url.Parse(web)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("github sign-in: web base %q is not an http(s) URL", web)
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &SignIn{clientID: clientID, secret: clientSecret, web: u, api: api, hc: hc}, nil
}

func (s *SignIn) endpoint(p string) *url.URL {
	u := *s.web
	u.Path = strings.TrimRight(u.Path, "/") + p
	u.RawQuery = ""
	return &u
}

// AuthorizeURL is where a browser is sent to sign in; GitHub sends it
// back to redirect with a code and state.
func (s *SignIn) AuthorizeURL(state, redirect string) string {
	u := s.endpoint("/login/oauth/authorize")
	u.RawQuery = url.Values{"client_id": {s.clientID}, "redirect_uri": {redirect}, "state": {state}}.Encode()
	return u.String()
}

// Exchange trades the code of a callback for the user's token.
func (s *SignIn) Exchange(ctx context.Context, code, redirect string) (string, error) {
	form := url.Values{"client_id": {s.clientID}, "client_secret": {s.secret}, "code": {code}, "redirect_uri": {redirect}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint("/login/oauth/access_token").String(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	res, err := s.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrSignIn, err)
	}
	defer res.Body.Close()
	// GitHub answers errors with 200 and an "error" field.
	var out struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&out); err != nil || res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%w: token endpoint answered %s", ErrSignIn, res.Status)
	}
	if out.Error != "" {
		return "", fmt.Errorf("%w: %s (%s)", ErrSignIn, out.Error, out.Description)
	}
	if out.AccessToken == "" {
		return "", fmt.Errorf("%w: no access token in the answer", ErrSignIn)
	}
	return out.AccessToken, nil
}

func (s *SignIn) client(token string) (*gh.Client, error) {
	c, err := gh.NewClient(s.hc).WithAuthToken(token).WithEnterpriseURLs(s.api, s.api)
	if err != nil {
		return nil, fmt.Errorf("github: API base %q: %w", s.api, err)
	}
	c.UserAgent = userAgent
	return c, nil
}

// User is who the token belongs to.
func (s *SignIn) User(ctx context.Context, token string) (login string, id int64, err error) {
	c, err := s.client(token)
	if err != nil {
		return "", 0, err
	}
	u, res, err := c.Users.Get(ctx, "")
	if err != nil {
		return "", 0, classify(res, fmt.Errorf("github: the signed-in user: %w", err))
	}
	if u.GetLogin() == "" {
		return "", 0, errors.New("github: the signed-in user has no login")
	}
	return u.GetLogin(), u.GetID(), nil
}

// Permission is what the token's user may do with owner/repo, from the
// repository's permissions as GitHub shows them to that user. A
// repository GitHub does not show them is NoAccess.
func (s *SignIn) Permission(ctx context.Context, token, owner, repo string) (coordinator.Permission, error) {
	c, err := s.client(token)
	if err != nil {
		return coordinator.NoAccess, err
	}
	r, res, err := c.Repositories.Get(ctx, owner, repo)
	if res != nil && res.StatusCode == http.StatusNotFound {
		return coordinator.NoAccess, nil
	}
	if err != nil {
		return coordinator.NoAccess, classify(res, fmt.Errorf("github: permissions on %s/%s: %w", owner, repo, err))
	}
	p := r.GetPermissions()
	switch {
	case p["admin"]:
		return coordinator.Admin, nil
	case p["maintain"] || p["push"]:
		return coordinator.Write, nil
	case p["triage"] || p["pull"]:
		return coordinator.Read, nil
	}
	return coordinator.NoAccess, nil
}

func classify(res *gh.Response, err error) error {
	if res != nil && res.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("%w: %v", coordinator.ErrBadCredential, err)
	}
	return err
}
