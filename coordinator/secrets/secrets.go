// Package secrets keeps repositories' secrets (DESIGN §5): sealed with
// AES-256-GCM under the coordinator's key (--secrets-key-file) before
// they reach the store, each bound to its repository and name, and opened
// only for the builds that may have them.
package secrets

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// KeySize is the key's size: 32 random bytes, written in a key file as
// 64 hex characters (openssl rand -hex 32).
const KeySize = 32

// ParseKey reads a key file's content: 64 hex characters, with
// surrounding white space ignored.
func ParseKey(b []byte) ([]byte, error) {
	text := strings.TrimSpace(string(b))
	k, err := hex.DecodeString(text)
	if err != nil || len(k) != KeySize {
		return nil, fmt.Errorf("want %d hex characters (%d random bytes: openssl rand -hex %d), got %d characters",
			2*KeySize, KeySize, KeySize, len(text))
	}
	return k, nil
}

// sealVersion starts every sealed value: the format (and the algorithm
// and additional data) it was sealed with.
const sealVersion = 1

// Keeper is the coordinator's coordinator.Secrets.
type Keeper struct {
	aead  cipher.AEAD
	store *store.Store
	now   func() time.Time
}

var _ coordinator.Secrets = (*Keeper)(nil)

// New returns a keeper that seals with key (KeySize bytes) into st.
func New(key []byte, st *store.Store) (*Keeper, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secrets: the key has %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Keeper{aead: aead, store: st, now: time.Now}, nil
}

// repoKey is how a repository is named in the store and in the sealed
// data: GitHub's names ignore case.
func repoKey(owner, repo string) (string, string) {
	return strings.ToLower(owner), strings.ToLower(repo)
}

// additional is the data a value is bound to: a sealed value moved to
// another row (repository or name) no longer opens.
func additional(owner, repo, name string) []byte {
	return []byte(fmt.Sprintf("forge secret v%d\x00%s\x00%s\x00%s", sealVersion, owner, repo, name))
}

func (k *Keeper) seal(owner, repo, name string, value []byte) []byte {
	return k.sealWith(additional(owner, repo, name), value)
}

func (k *Keeper) open(owner, repo, name string, sealed []byte) ([]byte, error) {
	v, err := k.openWith(additional(owner, repo, name), sealed)
	if errors.Is(err, errUnknownSeal) {
		return nil, fmt.Errorf("secret %s of %s/%s: not a sealed value this forge knows", name, owner, repo)
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s of %s/%s does not open with this --secrets-key-file: it was sealed with another key (start once with that key as --secrets-previous-key-file), or changed (set it again)", name, owner, repo)
	}
	return v, nil
}

var (
	errUnknownSeal = errors.New("not a sealed value this forge knows")
	errNoOpen      = errors.New("does not open with this --secrets-key-file (another key, or changed)")
)

func (k *Keeper) sealWith(ad, value []byte) []byte {
	out := make([]byte, 1+k.aead.NonceSize(), 1+k.aead.NonceSize()+len(value)+k.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1:]) // a random 96-bit nonce per seal
	return k.aead.Seal(out, out[1:], value, ad)
}

func (k *Keeper) openWith(ad, sealed []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(sealed) < 1+n || sealed[0] != sealVersion {
		return nil, errUnknownSeal
	}
	v, err := k.aead.Open(nil, sealed[1:1+n], sealed[1+n:], ad)
	if err != nil {
		return nil, errNoOpen
	}
	return v, nil
}

var _ coordinator.TokenSealer = (*Keeper)(nil)

// tokenAdditional binds a sealed GitHub token to its person: moved to
// another's row, it no longer opens.
func tokenAdditional(login string) []byte {
	return []byte(fmt.Sprintf("forge user token v%d\x00%s", sealVersion, strings.ToLower(login)))
}

// SealToken implements coordinator.TokenSealer.
func (k *Keeper) SealToken(login, token string) string {
	return coordinator.SealedTokenPrefix + base64.RawURLEncoding.EncodeToString(k.sealWith(tokenAdditional(login), []byte(token)))
}

// OpenToken implements coordinator.TokenSealer.
func (k *Keeper) OpenToken(login, sealed string) (string, error) {
	raw, ok := strings.CutPrefix(sealed, coordinator.SealedTokenPrefix)
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if !ok || err != nil {
		return "", fmt.Errorf("%s's GitHub token: %w", login, errUnknownSeal)
	}
	v, err := k.openWith(tokenAdditional(login), b)
	if err != nil {
		return "", fmt.Errorf("%s's GitHub token: %w", login, err)
	}
	return string(v), nil
}

// check refuses a bad repository, name or value, naming the problem.
func check(owner, repo, name string) error {
	if owner == "" || repo == "" || strings.ContainsAny(owner+repo, "/\x00") {
		return coordinator.BadSecret(fmt.Errorf("repository %q: want OWNER/REPO", owner+"/"+repo))
	}
	if err := wire.ValidSecretName(name); err != nil {
		return coordinator.BadSecret(err)
	}
	return nil
}

// Set implements coordinator.Secrets.
func (k *Keeper) Set(ctx context.Context, owner, repo, name string, value []byte, by string) error {
	if err := check(owner, repo, name); err != nil {
		return err
	}
	if err := wire.ValidSecretValue(value); err != nil {
		return coordinator.BadSecret(fmt.Errorf("secret %s: %v", name, err))
	}
	owner, repo = repoKey(owner, repo)
	return k.store.PutSecret(ctx, coordinator.Secret{Owner: owner, Repo: repo, Name: name, Updated: k.now().UTC(), UpdatedBy: by},
		k.seal(owner, repo, name, value))
}

// Delete implements coordinator.Secrets.
func (k *Keeper) Delete(ctx context.Context, owner, repo, name string) error {
	if err := check(owner, repo, name); err != nil {
		return err
	}
	owner, repo = repoKey(owner, repo)
	err := k.store.DeleteSecret(ctx, owner, repo, name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s/%s has no secret %s", coordinator.ErrNoSecret, owner, repo, name)
	}
	return err
}

// List implements coordinator.Secrets.
func (k *Keeper) List(ctx context.Context, owner, repo string) ([]coordinator.Secret, error) {
	owner, repo = repoKey(owner, repo)
	return k.store.Secrets(ctx, owner, repo)
}

// Values implements coordinator.Secrets.
func (k *Keeper) Values(ctx context.Context, owner, repo string, names []string) (map[string][]byte, error) {
	owner, repo = repoKey(owner, repo)
	sealed, err := k.store.SealedSecrets(ctx, owner, repo, names)
	if err != nil {
		return nil, err
	}
	var missing []string
	out := make(map[string][]byte, len(names))
	for _, name := range names {
		s, ok := sealed[name]
		if !ok {
			if !slices.Contains(missing, name) {
				missing = append(missing, name)
			}
			continue
		}
		v, err := k.open(owner, repo, name, s)
		if err != nil {
			return nil, err
		}
		out[name] = v
	}
	if len(missing) > 0 {
		return nil, &MissingError{Owner: owner, Repo: repo, Names: missing}
	}
	return out, nil
}

// MissingError names the secrets a build needs that its repository does
// not have. It wraps coordinator.ErrNoSecret.
type MissingError struct {
	Owner, Repo string
	Names       []string
}

func (e *MissingError) Error() string {
	what := "secret " + e.Names[0] + " is"
	if len(e.Names) > 1 {
		what = "secrets " + strings.Join(e.Names, ", ") + " are"
	}
	return fmt.Sprintf("%s not set for %s/%s (forge secrets set %s/%s NAME)", what, e.Owner, e.Repo, e.Owner, e.Repo)
}

func (e *MissingError) Unwrap() error { return coordinator.ErrNoSecret }

// RekeyResult says what Rekey changed.
type RekeyResult struct {
	Secrets int // secrets sealed again under the new key
	Tokens  int // people's tokens sealed again (or sealed for the first time)
	// Dropped are the people whose sealed token opened with neither key:
	// their token is forgotten, and they sign in again.
	Dropped []string
}

// Rekey seals again under k's key, in one transaction, every secret and
// every person's GitHub token that opens with previous, the key k's key
// replaces (--secrets-previous-key-file). What already opens with k's key
// stays as it is, and tokens kept in clear are sealed. A secret that
// opens with neither key fails it all, naming the secret, and nothing
// changes; a token that opens with neither is forgotten.
func (k *Keeper) Rekey(ctx context.Context, previous []byte) (RekeyResult, error) {
	var res RekeyResult
	prev, err := New(previous, nil)
	if err != nil {
		return res, fmt.Errorf("the previous key: %w", err)
	}
	secret := func(owner, repo, name string, sealed []byte) ([]byte, error) {
		if _, err := k.open(owner, repo, name, sealed); err == nil {
			return sealed, nil
		}
		v, err := prev.open(owner, repo, name, sealed)
		if err != nil {
			return nil, fmt.Errorf("secret %s of %s/%s opens with neither the key nor the previous key: set it again, or delete it, before the key changes", name, owner, repo)
		}
		return k.seal(owner, repo, name, v), nil
	}
	token := func(login, stored string) (string, error) {
		if !strings.HasPrefix(stored, coordinator.SealedTokenPrefix) {
			if stored == "" {
				return stored, nil
			}
			return k.SealToken(login, stored), nil
		}
		if _, err := k.OpenToken(login, stored); err == nil {
			return stored, nil
		}
		tok, err := prev.OpenToken(login, stored)
		if err != nil {
			res.Dropped = append(res.Dropped, login)
			return "", nil
		}
		return k.SealToken(login, tok), nil
	}
	res.Secrets, res.Tokens, err = k.store.Reseal(ctx, secret, token)
	if err != nil {
		return RekeyResult{}, err
	}
	res.Tokens -= len(res.Dropped)
	return res, nil
}
