package deploy

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/forge-ci/forge/internal/dockertest"
)

// The compose file, as far as these tests read it.
type stackFile struct {
	Services map[string]service `yaml:"services"`
	Networks map[string]struct {
		Driver     string            `yaml:"driver"`
		Attachable bool              `yaml:"attachable"`
		External   bool              `yaml:"external"`
		Labels     map[string]string `yaml:"labels"`
	} `yaml:"networks"`
	Volumes map[string]struct {
		External bool `yaml:"external"`
	} `yaml:"volumes"`
	Secrets map[string]struct {
		External bool   `yaml:"external"`
		Name     string `yaml:"name"`
		File     string `yaml:"file"`
	} `yaml:"secrets"`
}

type service struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	User        string            `yaml:"user"`
	CapDrop     []string          `yaml:"cap_drop"`
	Environment map[string]string `yaml:"environment"`
	Labels      map[string]string `yaml:"labels"`
	Volumes     []struct {
		Type     string `yaml:"type"`
		Source   string `yaml:"source"`
		Target   string `yaml:"target"`
		ReadOnly bool   `yaml:"read_only"`
	} `yaml:"volumes"`
	Ports []struct {
		Target    int    `yaml:"target"`
		Published string `yaml:"published"`
		Protocol  string `yaml:"protocol"`
		Mode      string `yaml:"mode"`
	} `yaml:"ports"`
	Networks names `yaml:"networks"`
	Secrets  []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
		UID    string `yaml:"uid"`
		Mode   int    `yaml:"mode"`
	} `yaml:"secrets"`
	Deploy struct {
		Mode         string            `yaml:"mode"`
		Replicas     *int              `yaml:"replicas"`
		EndpointMode string            `yaml:"endpoint_mode"`
		Labels       map[string]string `yaml:"labels"`
		Placement    struct {
			Constraints []string `yaml:"constraints"`
		} `yaml:"placement"`
	} `yaml:"deploy"`
}

// names is a list of names written as a list or as the keys of a map
// (docker stack config writes a service's networks as a map).
type names []string

func (n *names) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.MappingNode {
		for i := 0; i < len(node.Content); i += 2 {
			*n = append(*n, node.Content[i].Value)
		}
		return nil
	}
	return node.Decode((*[]string)(n))
}

func readStack(t *testing.T, name string) (stackFile, []byte) {
	t.Helper()
	raw, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var s stackFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return s, raw
}

const socket = "/var/run/docker.sock"

func hasSocket(s service) bool {
	for _, v := range s.Volumes {
		if v.Type == "bind" && v.Source == socket && v.Target == socket {
			return true
		}
	}
	return false
}

// secretTargets maps the files under /run/secrets of a service to the
// secret each comes from.
func secretTargets(s service) map[string]string {
	m := map[string]string{}
	for _, sec := range s.Secrets {
		target := sec.Target
		if target == "" {
			target = sec.Source
		}
		m[target] = sec.Source
	}
	return m
}

// TestStackFile checks deploy/stack.yml against what Forge needs on a
// swarm: the coordinator on a manager with its local socket, its data and
// its port; an agent on every node with that node's socket; the CA, the
// coordinator's certificate and key, the CA key (the coordinator's only),
// the join token, the webhook secret, the admin token, the session key
// and the secrets key as Docker secrets; one overlay network; and no Docker port anywhere.
func TestStackFile(t *testing.T) {
	s, raw := readStack(t, "stack.yml")
	coord, ok := s.Services["coordinator"]
	if !ok {
		t.Fatalf("no coordinator service; services: %v", keys(s.Services))
	}
	agent, ok := s.Services["agent"]
	if !ok {
		t.Fatalf("no agent service; services: %v", keys(s.Services))
	}
	if len(s.Services) != 2 {
		t.Errorf("services %v, want coordinator and agent", keys(s.Services))
	}

	// The agent: one per node, its node's socket, dialling the
	// coordinator by its service name.
	if agent.Deploy.Mode != "global" {
		t.Errorf("agent deploy.mode %q, want global", agent.Deploy.Mode)
	}
	if !hasSocket(agent) {
		t.Errorf("agent has no bind mount of %s: %+v", socket, agent.Volumes)
	}
	if !slices.Equal(agent.Command, []string{"agent"}) || !strings.Contains(agent.Image, "forge/agent:") {
		t.Errorf("agent runs %s %v", agent.Image, agent.Command)
	}
	host, port, err := net.SplitHostPort(agent.Environment["FORGE_COORDINATOR"])
	if err != nil || host != "coordinator" {
		t.Errorf("agent FORGE_COORDINATOR %q: want coordinator:PORT, the coordinator's service name (%v)", agent.Environment["FORGE_COORDINATOR"], err)
	}
	if _, lport, _ := net.SplitHostPort(coord.Environment["FORGE_AGENT_LISTEN"]); lport != port {
		t.Errorf("agents dial port %s, the coordinator listens on %q", port, coord.Environment["FORGE_AGENT_LISTEN"])
	}
	// The coordinator's certificate must name the host agents dial.
	if names := coordinatorCertNames(t); !slices.Contains(names, host) {
		t.Errorf("make up issues the coordinator's certificate for %q, not for %q", names, host)
	}

	// The coordinator: one replica on a manager, its socket, its data,
	// its HTTP port.
	if coord.Deploy.Mode != "" && coord.Deploy.Mode != "replicated" {
		t.Errorf("coordinator deploy.mode %q", coord.Deploy.Mode)
	}
	if coord.Deploy.Replicas == nil || *coord.Deploy.Replicas != 1 {
		t.Errorf("coordinator replicas %v, want 1", coord.Deploy.Replicas)
	}
	if !slices.Contains(coord.Deploy.Placement.Constraints, "node.role == manager") {
		t.Errorf("coordinator constraints %q lack node.role == manager", coord.Deploy.Placement.Constraints)
	}
	if !hasSocket(coord) {
		t.Errorf("coordinator has no bind mount of %s: %+v", socket, coord.Volumes)
	}
	if !slices.Equal(coord.Command, []string{"coordinator"}) || !strings.Contains(coord.Image, "forge/coordinator:") {
		t.Errorf("coordinator runs %s %v", coord.Image, coord.Command)
	}
	data := coord.Environment["FORGE_DATA"]
	found := false
	for _, v := range coord.Volumes {
		if v.Type == "volume" && v.Target == data && data != "" {
			found = true
			if _, declared := s.Volumes[v.Source]; !declared {
				t.Errorf("volume %q is not declared", v.Source)
			}
		}
	}
	if !found {
		t.Errorf("no volume holds the coordinator's --data (FORGE_DATA %q): %+v", data, coord.Volumes)
	}
	_, httpPort, _ := net.SplitHostPort(coord.Environment["FORGE_LISTEN"])
	if len(coord.Ports) != 1 || fmt.Sprint(coord.Ports[0].Target) != httpPort ||
		!strings.Contains(coord.Ports[0].Published, "FORGE_HTTP_PORT") {
		t.Errorf("coordinator ports %+v: want its HTTP port %q published at ${FORGE_HTTP_PORT}", coord.Ports, httpPort)
	}

	// Keys, certificates, the webhook secret, the admin token and the
	// session key are Docker secrets, each declared, each used, and every
	// file flag points at one.
	used := map[string]bool{}
	for name, svc := range s.Services {
		targets := secretTargets(svc)
		for _, src := range targets {
			used[src] = true
			if _, ok := s.Secrets[src]; !ok {
				t.Errorf("%s uses the undeclared secret %q", name, src)
			}
		}
		privateMounts(t, name, svc)
		for env, val := range svc.Environment {
			if f, ok := strings.CutPrefix(val, "/run/secrets/"); ok {
				if _, ok := targets[f]; !ok {
					t.Errorf("%s: %s=%s, but no secret is mounted there", name, env, val)
				}
			}
		}
	}
	for name, sec := range s.Secrets {
		if !used[name] {
			t.Errorf("secret %q is declared but not used", name)
		}
		if !sec.External || !strings.Contains(sec.Name, "${") {
			t.Errorf("secret %q: want external, named by make up (secrets are immutable: the name carries a hash)", name)
		}
	}
	for _, env := range []string{"FORGE_TLS_CA", "FORGE_TLS_CERT", "FORGE_TLS_KEY", "FORGE_TLS_CA_KEY", "FORGE_JOIN_TOKEN_FILE",
		"FORGE_WEBHOOK_SECRET_FILE", "FORGE_ADMIN_TOKEN_FILE", "FORGE_SESSION_KEY_FILE", "FORGE_SECRETS_KEY_FILE"} {
		if !strings.HasPrefix(coord.Environment[env], "/run/secrets/") {
			t.Errorf("coordinator %s=%q, want a secret", env, coord.Environment[env])
		}
	}
	// An agent has the CA's certificate and the join token, and nothing
	// else: no certificate, and never the CA key.
	for _, env := range []string{"FORGE_TLS_CA", "FORGE_JOIN_TOKEN_FILE"} {
		if !strings.HasPrefix(agent.Environment[env], "/run/secrets/") {
			t.Errorf("agent %s=%q, want a secret", env, agent.Environment[env])
		}
	}
	for _, env := range []string{"FORGE_TLS_CERT", "FORGE_TLS_KEY", "FORGE_TLS_CA_KEY"} {
		if v, ok := agent.Environment[env]; ok {
			t.Errorf("agent %s=%q: agents join with the token and get their own node's certificate", env, v)
		}
	}
	if got := keys(invert(secretTargets(agent))); !slices.Equal(got, []string{"ca", "join_token"}) {
		t.Errorf("agent secrets %v, want ca and join_token only", got)
	}
	coordSecrets, agentSecrets := secretTargets(coord), secretTargets(agent)
	for _, env := range []string{"FORGE_TLS_CA", "FORGE_JOIN_TOKEN_FILE"} {
		c, _ := strings.CutPrefix(coord.Environment[env], "/run/secrets/")
		a, _ := strings.CutPrefix(agent.Environment[env], "/run/secrets/")
		if coordSecrets[c] == "" || coordSecrets[c] != agentSecrets[a] {
			t.Errorf("%s: the coordinator's is the secret %q, the agents' %q; want the same", env, coordSecrets[c], agentSecrets[a])
		}
	}
	if caKey, _ := strings.CutPrefix(coord.Environment["FORGE_TLS_CA_KEY"], "/run/secrets/"); coordSecrets[caKey] != "ca_key" {
		t.Errorf("coordinator FORGE_TLS_CA_KEY=%q is the secret %q, want ca_key", coord.Environment["FORGE_TLS_CA_KEY"], coordSecrets[caKey])
	}

	// One overlay network, attachable, shared by both.
	if len(coord.Networks) == 0 || !slices.Equal(coord.Networks, agent.Networks) {
		t.Errorf("networks: coordinator %v, agent %v", coord.Networks, agent.Networks)
	}
	for _, n := range coord.Networks {
		nw, ok := s.Networks[n]
		if !ok || nw.Driver != "overlay" || !nw.Attachable || nw.External {
			t.Errorf("network %q: %+v, want a declared overlay network, attachable", n, nw)
		}
	}

	// Labelled, unprivileged.
	for name, svc := range s.Services {
		if svc.Labels["forge.component"] != name || svc.Deploy.Labels["forge.component"] != name {
			t.Errorf("%s: labels %v, deploy.labels %v; want forge.component=%s on both", name, svc.Labels, svc.Deploy.Labels, name)
		}
		if svc.User == "" || !slices.Contains(svc.CapDrop, "ALL") {
			t.Errorf("%s: user %q, cap_drop %v", name, svc.User, svc.CapDrop)
		}
		if _, ok := svc.Environment["FORGE_DOCKER_HOST"]; ok {
			t.Errorf("%s sets FORGE_DOCKER_HOST: the local socket is the default", name)
		}
	}

	noDockerPort(t, "stack.yml", raw)
	usedVariables(t, "stack.yml", raw)
}

// privateMounts: a key, token or secret is readable by the services'
// user only.
func privateMounts(t *testing.T, name string, svc service) {
	t.Helper()
	for _, v := range svc.Secrets {
		if strings.Contains(v.Target, "key") || strings.Contains(v.Target, "token") || strings.Contains(v.Target, "secret") {
			if v.Mode != 0o400 || v.UID != "${FORGE_UID:-65532}" {
				t.Errorf("%s: %s has mode %#o and uid %q, want 0400 for FORGE_UID", name, v.Target, v.Mode, v.UID)
			}
		}
	}
}

// TestStackGitHub checks deploy/stack.github.yml, the GitHub App's part,
// and deploy/stack.signin.yml, sign-in with GitHub's.
func TestStackGitHub(t *testing.T) {
	for _, tc := range []struct{ file, id, secretFile string }{
		{"stack.github.yml", "FORGE_GITHUB_APP_ID", "FORGE_GITHUB_KEY_FILE"},
		{"stack.signin.yml", "FORGE_GITHUB_CLIENT_ID", "FORGE_GITHUB_CLIENT_SECRET_FILE"},
	} {
		s, raw := readStack(t, tc.file)
		coord := s.Services["coordinator"]
		if len(s.Services) != 1 {
			t.Errorf("%s: services %v, want only the coordinator", tc.file, keys(s.Services))
		}
		if coord.Environment[tc.id] == "" {
			t.Errorf("%s: no %s", tc.file, tc.id)
		}
		f, ok := strings.CutPrefix(coord.Environment[tc.secretFile], "/run/secrets/")
		if src, mounted := secretTargets(coord)[f]; !ok || !mounted {
			t.Errorf("%s: %s=%q is not a mounted secret", tc.file, tc.secretFile, coord.Environment[tc.secretFile])
		} else if sec, declared := s.Secrets[src]; !declared || !sec.External {
			t.Errorf("%s: secret %q not declared external", tc.file, src)
		}
		privateMounts(t, tc.file, coord)
		noDockerPort(t, tc.file, raw)
		usedVariables(t, tc.file, raw)
	}
	if s, _ := readStack(t, "stack.signin.yml"); s.Services["coordinator"].Environment["FORGE_GITHUB_WEB"] != "${FORGE_GITHUB_WEB:-https://github.com}" {
		t.Errorf("stack.signin.yml: FORGE_GITHUB_WEB=%q", s.Services["coordinator"].Environment["FORGE_GITHUB_WEB"])
	}
}

// noDockerPort: Forge never reaches Docker over TCP.
func noDockerPort(t *testing.T, name string, raw []byte) {
	t.Helper()
	for _, bad := range []string{"DOCKER_HOST", "tcp://", "2375", "2376"} {
		if bytes.Contains(raw, []byte(bad)) {
			t.Errorf("%s mentions %s: Forge reaches Docker only through local sockets", name, bad)
		}
	}
}

// usedVariables: every variable the file interpolates is one that
// forge deploy up sets.
func usedVariables(t *testing.T, name string, raw []byte) {
	t.Helper()
	set := stackVariables(t)
	for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+)`).FindAllSubmatch(raw, -1) {
		if !set[string(m[1])] {
			t.Errorf("%s uses ${%s}, which forge deploy up never sets", name, m[1])
		}
	}
}

// stackVariables are the variables forge deploy up runs docker stack
// deploy with, the GitHub App and sign-in configured.
func stackVariables(t *testing.T) map[string]bool {
	t.Helper()
	u := &up{run: &run{engine: &fakeEngine{t: t}}, s: Settings{GitHubAppID: "42", GitHubClientID: "Iv1.c"}}
	for _, f := range u.secretFiles() {
		u.secrets = append(u.secrets, deployed{f, "s-" + f.what})
	}
	set := map[string]bool{}
	for _, kv := range u.stackEnv("v1", "") {
		k, _, _ := strings.Cut(kv, "=")
		set[k] = true
	}
	return set
}

// coordinatorCertNames are the DNS names of the coordinator's certificate
// as make up issues it.
func coordinatorCertNames(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	if err := makeCerts(dir, func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "coordinator.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("coordinator.pem holds no PEM block:\n%s", raw)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert.DNSNames
}

// TestStackConfig has the docker CLI itself read the three files with the
// variables make up sets (docker stack config: no engine needed).
func TestStackConfig(t *testing.T) {
	if _, err := exec.LookPath("docker"); err != nil {
		dockertest.Unavailable(t, "docker CLI: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", "stack", "config", "-c", "stack.yml", "-c", "stack.github.yml", "-c", "stack.signin.yml")
	cmd.Env = append(os.Environ(), "FORGE_USER=65532:999", "FORGE_AGENT_USER=65532:999", "FORGE_UID=65532",
		"FORGE_COORDINATOR_NODE=node1", "FORGE_VERSION=v1", "FORGE_HTTP_PORT=9090", "FORGE_GITHUB_APP_ID=42",
		"FORGE_GITHUB_CLIENT_ID=Iv1.c", "FORGE_GITHUB_WEB=",
		"FORGE_SECRET_CA=s1", "FORGE_SECRET_COORDINATOR_CERT=s2", "FORGE_SECRET_COORDINATOR_KEY=s3",
		"FORGE_SECRET_CA_KEY=s4", "FORGE_SECRET_JOIN_TOKEN=s5", "FORGE_SECRET_WEBHOOK=s6", "FORGE_SECRET_GITHUB_KEY=s7",
		"FORGE_SECRET_ADMIN_TOKEN=s8", "FORGE_SECRET_SESSION_KEY=s9", "FORGE_SECRET_GITHUB_CLIENT_SECRET=s10",
		"FORGE_SECRET_SECRETS_KEY=s11")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker stack config: %v\n%s", err, out)
	}
	var s stackFile
	if err := yaml.Unmarshal(out, &s); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c := s.Services["coordinator"]
	if c.Environment["FORGE_GITHUB_APP_ID"] != "42" || c.Deploy.Placement.Constraints[1] != "node.id == node1" ||
		len(c.Ports) != 1 || c.Ports[0].Published != "9090" || len(c.Secrets) != 11 || s.Secrets["github_app_key"].Name != "s7" {
		t.Errorf("merged configuration:\n%s", out)
	}
	// The coordinator's flags (as their FORGE_ variables) and the secrets behind them.
	targets := secretTargets(c)
	for env, want := range map[string]string{
		"FORGE_ADMIN_TOKEN_FILE":          "s8",
		"FORGE_SESSION_KEY_FILE":          "s9",
		"FORGE_SECRETS_KEY_FILE":          "s11",
		"FORGE_GITHUB_CLIENT_SECRET_FILE": "s10",
		"FORGE_WEBHOOK_SECRET_FILE":       "s6",
		"FORGE_TLS_CA_KEY":                "s4",
		"FORGE_JOIN_TOKEN_FILE":           "s5",
	} {
		f, _ := strings.CutPrefix(c.Environment[env], "/run/secrets/")
		if got := s.Secrets[targets[f]].Name; got != want {
			t.Errorf("%s=%q is the secret %q, want %q", env, c.Environment[env], got, want)
		}
	}
	if c.Environment["FORGE_GITHUB_CLIENT_ID"] != "Iv1.c" || c.Environment["FORGE_GITHUB_WEB"] != "https://github.com" {
		t.Errorf("sign-in: client id %q, web %q", c.Environment["FORGE_GITHUB_CLIENT_ID"], c.Environment["FORGE_GITHUB_WEB"])
	}
	a := s.Services["agent"]
	if a.User != "65532:999" {
		t.Errorf("agent user %q", a.User)
	}
	if f, _ := strings.CutPrefix(a.Environment["FORGE_JOIN_TOKEN_FILE"], "/run/secrets/"); s.Secrets[secretTargets(a)[f]].Name != "s5" {
		t.Errorf("agent FORGE_JOIN_TOKEN_FILE=%q is not the join token's secret", a.Environment["FORGE_JOIN_TOKEN_FILE"])
	}
}

// invert maps values to keys.
func invert(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[v] = k
	}
	return out
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}
