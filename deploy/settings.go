package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Settings are make up's settings (README: Settings). Each comes from its
// flag or FORGE_ environment variable when that is not empty, else from
// the state folder's forge.env, else its default; make up keeps them in
// forge.env.
type Settings struct {
	HTTPPort    string // FORGE_HTTP_PORT: the coordinator's published HTTP port (8080)
	PublicURL   string // FORGE_PUBLIC_URL: the base URL GitHub and commit statuses use
	GitHubAppID string // FORGE_GITHUB_APP_ID
	GitHubAPI   string // FORGE_GITHUB_API: GitHub Enterprise's API
	// Sign-in with GitHub (optional): the OAuth client's id, and GitHub's
	// web address (GitHub Enterprise's; empty: the coordinator's default).
	GitHubClientID string // FORGE_GITHUB_CLIENT_ID
	GitHubWeb      string // FORGE_GITHUB_WEB
	Registry       string // FORGE_REGISTRY: where make images pushed the images
	User           string // FORGE_USER: uid:gid of the services (65532:<gid of the socket>)
	AgentUser      string // FORGE_AGENT_USER: uid:gid of the agents (FORGE_USER)
}

const (
	envFile         = "forge.env"
	defaultHTTPPort = "8080"
)

type setting struct {
	key   string
	value *string
}

// fields are the settings in forge.env's order.
func (s *Settings) fields() []setting {
	return []setting{
		{"FORGE_HTTP_PORT", &s.HTTPPort},
		{"FORGE_PUBLIC_URL", &s.PublicURL},
		{"FORGE_GITHUB_APP_ID", &s.GitHubAppID},
		{"FORGE_GITHUB_API", &s.GitHubAPI},
		{"FORGE_GITHUB_CLIENT_ID", &s.GitHubClientID},
		{"FORGE_GITHUB_WEB", &s.GitHubWeb},
		{"FORGE_REGISTRY", &s.Registry},
		{"FORGE_USER", &s.User},
		{"FORGE_AGENT_USER", &s.AgentUser},
	}
}

// withSaved fills the settings left empty from stateDir's forge.env.
func (s Settings) withSaved(stateDir string) (Settings, error) {
	saved, err := readEnvFile(filepath.Join(stateDir, envFile))
	if err != nil {
		return s, err
	}
	for _, f := range s.fields() {
		if *f.value == "" {
			*f.value = saved[f.key]
		}
	}
	return s, nil
}

// readEnvFile reads the KEY=value lines of path: the value is the rest of
// the line as written, the last line of a key wins, and a missing file
// holds nothing.
func readEnvFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the settings: %w", err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if key, value, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(key, "#") {
			m[key] = value
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return m, nil
}

// envFileText is forge.env as make up writes it.
func (s Settings) envFileText() []byte {
	var b bytes.Buffer
	b.WriteString("# Settings of make up (forge deploy up), kept between runs. Edit them here, or\n" +
		"# pass FORGE_...=value to make up, which saves them. Empty: the default.\n")
	for _, f := range s.fields() {
		fmt.Fprintf(&b, "%s=%s\n", f.key, *f.value)
	}
	return b.Bytes()
}
