package coordinator

import "time"

// Permission is what a person may do with a repository's builds, read
// from GitHub's permissions on the repository (DESIGN §3, §5).
type Permission int

const (
	NoAccess Permission = iota // may not know the build exists
	Read                       // see builds and logs
	Write                      // cancel, approve and re-run
	Admin                      // the repository's secrets
)

func (p Permission) String() string {
	switch p {
	case Read:
		return "read"
	case Write:
		return "write"
	case Admin:
		return "admin"
	}
	return "none"
}

// User is a person who signed in with GitHub. Token is their GitHub user
// access token: it stays on the coordinator and asks GitHub what they may
// do.
type User struct {
	Login    string
	GitHubID int64
	Token    string
	Updated  time.Time
}

// Session is a browser's sign-in. ID is the SHA-256 of the secret in the
// cookie, so the database alone cannot forge a cookie.
type Session struct {
	ID      string
	Login   string
	CSRF    string // sent back with every state-changing request
	Created time.Time
	Expires time.Time
}

// APIToken is a personal token for scripts, carrying its owner's rights.
// Only its hash is kept.
type APIToken struct {
	ID       string
	Login    string
	Name     string
	Hash     string // hex SHA-256 of the token
	Created  time.Time
	LastUsed time.Time
}
