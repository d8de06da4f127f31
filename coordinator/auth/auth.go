// Package auth is the coordinator's front door (DESIGN §3, §5): who a
// request comes from (a browser session from GitHub sign-in, a personal
// token, the admin token, or nobody) and what they may do with a
// repository's builds, as GitHub says.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
)

var (
	// ErrNoCredential: the request carries none, and needs one (401).
	ErrNoCredential = errors.New("sign in, or send a token in Authorization: Bearer")
	// ErrBadCredential: a token or cookie that is malformed, unknown,
	// revoked, expired or forged; or GitHub no longer takes the person's
	// authorisation (401).
	ErrBadCredential = coordinator.ErrBadCredential
	// ErrForbidden: known, but without the right needed (403).
	ErrForbidden = errors.New("permission denied")
	// ErrHidden: a private build that the requester may not read (404).
	ErrHidden = errors.New("not found")
	// ErrCSRF: a browser's state-changing request without its session's
	// CSRF token (403).
	ErrCSRF = errors.New("missing or wrong CSRF token")
)

const (
	// SessionCookie names the browser's session cookie.
	SessionCookie = "forge_session"
	// CSRFHeader carries a session's CSRF token; forms send it as field
	// CSRFField.
	CSRFHeader = "X-Forge-CSRF"
	CSRFField  = "csrf"
	// TokenPrefix starts every personal token, so that people and secret
	// scanners recognise one.
	TokenPrefix = "forge_pat_"

	// DefaultSessionTTL is how long a sign-in lasts.
	DefaultSessionTTL = 12 * time.Hour
	// PermissionTTL bounds how long GitHub's answer is trusted.
	PermissionTTL = 5 * time.Minute
)

// GitHub is the GitHub side of sign-in (github.SignIn). User and
// Permission wrap ErrBadCredential when GitHub refuses the token.
type GitHub interface {
	AuthorizeURL(state, redirect string) string
	Exchange(ctx context.Context, code, redirect string) (string, error)
	User(ctx context.Context, token string) (login string, id int64, err error)
	Permission(ctx context.Context, token, owner, repo string) (coordinator.Permission, error)
}

// Config sets up the front door.
type Config struct {
	Store *store.Store
	// GitHub, when set, lets people sign in; nil: only tokens work.
	GitHub GitHub
	// PublicURL is the coordinator's base URL as browsers see it: the
	// sign-in callback is under it, and https makes cookies Secure.
	PublicURL string
	// Key signs cookies; at least 32 bytes.
	Key []byte
	// AdminToken, when set, is a bearer token with every right.
	AdminToken string
	// Admins are GitHub logins that are Forge admins (agents).
	Admins []string
	// RequireSignIn hides public repositories' builds from anonymous
	// requests too.
	RequireSignIn bool
	SessionTTL    time.Duration // DefaultSessionTTL when 0
	// Tokens, when set (a secrets key), seals people's GitHub tokens in
	// the store; nil keeps them in clear.
	Tokens coordinator.TokenSealer
	Now    func() time.Time
}

// Kind is how a request was authenticated.
type Kind int

const (
	Anonymous  Kind = iota
	Browser         // a session cookie
	Token           // a personal token
	AdminToken      // the admin token
)

// Principal is who a request comes from.
type Principal struct {
	Kind  Kind
	Login string // GitHub login; "" for Anonymous and AdminToken
	Admin bool   // a Forge admin
	// Session is the browser's session (Browser only).
	Session *coordinator.Session
}

// Name is the principal as logs and pages say it.
func (p *Principal) Name() string {
	switch p.Kind {
	case Anonymous:
		return "anonymous"
	case AdminToken:
		return "admin token"
	}
	return p.Login
}

// Auth answers who and what. It is safe for concurrent use.
type Auth struct {
	cfg    Config
	admins map[string]bool
	secure bool
	admin  [32]byte // SHA-256 of the admin token

	mu    sync.Mutex
	perms map[string]cachedPermission
}

type cachedPermission struct {
	p       coordinator.Permission
	expires time.Time
}

// New checks cfg and returns the front door.
func New(cfg Config) (*Auth, error) {
	if cfg.Store == nil {
		return nil, errors.New("auth: no store")
	}
	if len(cfg.Key) < 32 {
		return nil, fmt.Errorf("auth: the cookie key has %d bytes, want at least 32", len(cfg.Key))
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AdminToken != "" && len(cfg.AdminToken) < 16 {
		return nil, errors.New("auth: the admin token is shorter than 16 characters")
	}
	a := &Auth{cfg: cfg, admins: map[string]bool{}, perms: map[string]cachedPermission{},
		secure: strings.HasPrefix(cfg.PublicURL, "https://")}
	for _, l := range cfg.Admins {
		if l = strings.TrimSpace(l); l != "" {
			a.admins[strings.ToLower(l)] = true
		}
	}
	if cfg.AdminToken != "" {
		a.admin = sha256.Sum256([]byte(cfg.AdminToken))
	}
	return a, nil
}

// SignInConfigured says whether people can sign in with GitHub.
func (a *Auth) SignInConfigured() bool { return a.cfg.GitHub != nil }

// Identify says who r comes from. A credential that is present but not
// good is ErrBadCredential, never anonymous: a script with a revoked token
// must hear so.
func (a *Auth) Identify(r *http.Request) (*Principal, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		return a.bearer(r.Context(), h)
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return &Principal{Kind: Anonymous}, nil
	}
	return a.session(r.Context(), c.Value)
}

func (a *Auth) bearer(ctx context.Context, h string) (*Principal, error) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" || strings.ContainsAny(tok, " \t") {
		return nil, fmt.Errorf("%w: Authorization must be \"Bearer <token>\"", ErrBadCredential)
	}
	sum := sha256.Sum256([]byte(tok))
	if a.cfg.AdminToken != "" && hmac.Equal(sum[:], a.admin[:]) {
		return &Principal{Kind: AdminToken, Admin: true}, nil
	}
	if !strings.HasPrefix(tok, TokenPrefix) {
		return nil, fmt.Errorf("%w: unknown token", ErrBadCredential)
	}
	// Looked up by hash: the table holds no token, and a timing
	// difference says nothing about a value nobody stores.
	t, err := a.cfg.Store.APITokenByHash(ctx, hex.EncodeToString(sum[:]))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: unknown or revoked token", ErrBadCredential)
	}
	if err != nil {
		return nil, err
	}
	return &Principal{Kind: Token, Login: t.Login, Admin: a.admins[strings.ToLower(t.Login)]}, nil
}

// HashToken is how a personal token is kept.
func HashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// NewToken makes a personal token for login; the token itself is
// returned once and never kept.
func (a *Auth) NewToken(ctx context.Context, login, name string) (string, coordinator.APIToken, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 {
		return "", coordinator.APIToken{}, errors.New("a token needs a name of 1 to 100 characters")
	}
	tok := TokenPrefix + random(32)
	t := coordinator.APIToken{ID: random(8), Login: login, Name: name, Hash: HashToken(tok), Created: a.cfg.Now()}
	if err := a.cfg.Store.CreateAPIToken(ctx, t); err != nil {
		return "", t, err
	}
	return tok, t, nil
}

// random is n random bytes, base64url.
func random(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Access is what p may do with owner/repo, whose builds are public or
// not. It asks GitHub at most once per PermissionTTL per person and
// repository.
func (a *Auth) Access(ctx context.Context, p *Principal, owner, repo string, public bool) (coordinator.Permission, error) {
	floor := coordinator.NoAccess
	if public && (p.Kind != Anonymous || !a.cfg.RequireSignIn) {
		floor = coordinator.Read
	}
	switch p.Kind {
	case AdminToken:
		return coordinator.Admin, nil
	case Anonymous:
		return floor, nil
	}
	got, err := a.permission(ctx, p.Login, owner, repo)
	if err != nil {
		return floor, err
	}
	return max(got, floor), nil
}

// Need answers nil when p may act with need on owner/repo, else the
// refusal to give: ErrNoCredential for nobody, ErrHidden when p may not
// even read a private repository, ErrForbidden otherwise.
func (a *Auth) Need(ctx context.Context, p *Principal, owner, repo string, public bool, need coordinator.Permission) error {
	if p.Kind == Anonymous && (a.cfg.RequireSignIn || (need > coordinator.Read && public)) {
		return ErrNoCredential
	}
	// Reading a public repository needs nobody to ask GitHub.
	if need == coordinator.Read && public && (p.Kind != Anonymous || !a.cfg.RequireSignIn) {
		return nil
	}
	got, err := a.Access(ctx, p, owner, repo, public)
	if err != nil {
		return err
	}
	switch {
	case got >= need:
		return nil
	case got == coordinator.NoAccess:
		return ErrHidden
	case p.Kind == Anonymous:
		return ErrNoCredential
	}
	return fmt.Errorf("%w: %s has %s on %s/%s, this needs %s", ErrForbidden, p.Name(), got, owner, repo, need)
}

// NeedAdmin answers nil for a Forge admin.
func (a *Auth) NeedAdmin(p *Principal) error {
	switch {
	case p.Admin:
		return nil
	case p.Kind == Anonymous:
		return ErrNoCredential
	}
	return fmt.Errorf("%w: %s is not a Forge admin", ErrForbidden, p.Name())
}

// NeedSignIn answers nil for anyone but nobody (or, with RequireSignIn
// off, for anyone at all when open is set).
func (a *Auth) NeedSignIn(p *Principal, open bool) error {
	if p.Kind == Anonymous && (!open || a.cfg.RequireSignIn) {
		return ErrNoCredential
	}
	return nil
}

func (a *Auth) permission(ctx context.Context, login, owner, repo string) (coordinator.Permission, error) {
	key := strings.ToLower(login + "\x00" + owner + "/" + repo)
	now := a.cfg.Now()
	a.mu.Lock()
	c, ok := a.perms[key]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.p, nil
	}
	if a.cfg.GitHub == nil {
		return coordinator.NoAccess, nil
	}
	u, err := a.cfg.Store.User(ctx, login)
	if errors.Is(err, store.ErrNotFound) || (err == nil && u.Token == "") {
		return coordinator.NoAccess, fmt.Errorf("%w: %s has no GitHub authorisation here; sign in again", ErrBadCredential, login)
	}
	if err != nil {
		return coordinator.NoAccess, err
	}
	tok, err := a.userToken(ctx, u)
	if err != nil {
		return coordinator.NoAccess, err
	}
	p, err := a.cfg.GitHub.Permission(ctx, tok, owner, repo)
	if errors.Is(err, ErrBadCredential) {
		return coordinator.NoAccess, fmt.Errorf("%w: GitHub no longer takes %s's authorisation; sign in again", ErrBadCredential, login)
	}
	if err != nil {
		return coordinator.NoAccess, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.perms) > 10000 {
		for k, c := range a.perms {
			if !now.Before(c.expires) {
				delete(a.perms, k)
			}
		}
	}
	a.perms[key] = cachedPermission{p: p, expires: now.Add(PermissionTTL)}
	return p, nil
}

// userToken is u's GitHub token: opened when sealed. A token stored in
// clear before the coordinator had a secrets key is sealed now.
func (a *Auth) userToken(ctx context.Context, u coordinator.User) (string, error) {
	if strings.HasPrefix(u.Token, coordinator.SealedTokenPrefix) {
		if a.cfg.Tokens == nil {
			return "", fmt.Errorf("%w: %s's GitHub authorisation is sealed with a secrets key this coordinator does not have (--secrets-key-file); sign in again", ErrBadCredential, u.Login)
		}
		tok, err := a.cfg.Tokens.OpenToken(u.Login, u.Token)
		if err != nil {
			return "", fmt.Errorf("%w: %v; sign in again", ErrBadCredential, err)
		}
		return tok, nil
	}
	tok := u.Token
	if a.cfg.Tokens != nil {
		u.Token = a.cfg.Tokens.SealToken(u.Login, tok)
		if err := a.cfg.Store.PutUser(ctx, u); err != nil {
			return "", fmt.Errorf("seal %s's GitHub token: %w", u.Login, err)
		}
	}
	return tok, nil
}
