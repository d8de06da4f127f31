package coordinator

import (
	"context"
	"errors"
	"time"
)

// Secret is a repository secret as people see it: its name, and when
// and by whom it was last set. Its value is never shown (DESIGN §5).
type Secret struct {
	Owner, Repo string
	Name        string
	Updated     time.Time
	UpdatedBy   string
}

// Secrets keeps repositories' secrets sealed, and opens them for the
// builds that may have them (secrets.Keeper). A coordinator without a
// secrets key (--secrets-key-file) has none.
type Secrets interface {
	// Set seals and stores value as owner/repo's secret name, recording
	// who set it. A bad name or value wraps ErrBadSecret and stores
	// nothing.
	Set(ctx context.Context, owner, repo, name string, value []byte, by string) error
	// Delete removes a secret; ErrNoSecret when there is none.
	Delete(ctx context.Context, owner, repo, name string) error
	// List gives owner/repo's secrets, by name, without their values.
	List(ctx context.Context, owner, repo string) ([]Secret, error)
	// Values opens the named secrets of owner/repo; any that is not set
	// makes an error wrapping ErrNoSecret that names them all.
	Values(ctx context.Context, owner, repo string, names []string) (map[string][]byte, error)
}

// TokenSealer seals people's GitHub tokens before they reach the store,
// with the secrets key (secrets.Keeper); a coordinator without that key
// keeps them as GitHub gave them.
type TokenSealer interface {
	// SealToken seals login's token; the result starts with
	// SealedTokenPrefix.
	SealToken(login, token string) string
	// OpenToken opens what SealToken made for login, and nothing else.
	OpenToken(login, sealed string) (string, error)
}

// SealedTokenPrefix starts a sealed token as stored, telling it from one
// stored in clear before the coordinator had a secrets key.
const SealedTokenPrefix = "forge-sealed-v1:"

var (
	// ErrNoSecretsKey: secrets are disabled, as the coordinator has no
	// key to seal them with.
	ErrNoSecretsKey = errors.New("this coordinator has no secrets key (--secrets-key-file)")
	// ErrBadSecret: a secret's name or value breaks the rules (an error
	// made by BadSecret, whose text says which).
	ErrBadSecret = errors.New("invalid secret")
	// ErrNoSecret: the repository has no secret of that name.
	ErrNoSecret = errors.New("no such secret")
)

// BadSecret marks err, which names the problem, as ErrBadSecret without
// adding to its text.
func BadSecret(err error) error { return badSecret{err} }

type badSecret struct{ error }

func (badSecret) Is(target error) bool { return target == ErrBadSecret }
func (b badSecret) Unwrap() error      { return b.error }
