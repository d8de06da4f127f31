// Package config reads a repository's .forge.yml, the build configuration
// described in DESIGN.md §2 ("Build configuration").
//
// [Parse] walks the YAML node tree itself instead of unmarshalling into a
// struct, so that every problem can be reported with its file, line, column
// and key, and so that all problems are reported at once: a user pushing a
// broken .forge.yml should be able to fix it in one go from the commit status
// and the build page.
//
// # The file
//
//	image: golang:1.22          # required: the build image
//	environment:                # optional: variables for every command
//	  GOFLAGS: -mod=mod
//	setup:                      # optional: commands run before the action
//	  - go mod download
//	execute:                    # required: the action run for pull requests
//	  - go test ./...
//	deploy:                     # any other top-level list of commands is an action
//	  - ./scripts/release.sh
//	on:
//	  push:
//	    main: deploy            # a push to branch main runs `deploy`
//	artifacts: [coverage.out]   # relative paths or globs
//	timeout: 30m                # default 1h, at most 24h
//	workdir: /forge/src         # default /forge/src
//	resources: {cpus: 2, memory: 4GiB}
//	constraints: ["node.labels.ci==true"]
//	ports: ["8000:8000"]
//	cache:                      # kept between builds of the repository
//	  paths: [/root/.cache/go-build, node_modules]
//	  key: '{{ hashFiles "go.sum" }}'
//	secrets: [DEPLOY_TOKEN]     # or per action: {deploy: [DEPLOY_TOKEN]}
//
// # Rules beyond the design
//
//   - The file must be UTF-8, at most [MaxSize] bytes, and hold exactly one
//     YAML document. An empty file (or one holding only comments) is an error.
//   - A YAML syntax error carries the line yaml.v3 reports, which is that of
//     the construct being read when it failed (at or a little before the
//     mistake), and no column.
//   - Keys may not repeat, at any level.
//   - Anchors and aliases are resolved (`deploy: *test` reuses a list), but
//     merge keys (`<<: *base`) are refused, and a document whose aliases
//     expand to more than [MaxValues] values is refused, so that a crafted
//     file (a "billion laughs") cannot make the coordinator do unbounded
//     work.
//   - A key left empty (`setup:` with nothing under it) means "not set" for
//     the optional lists and mappings (environment, setup, on, on.push,
//     artifacts, constraints, ports, resources); it is an error for image,
//     execute, timeout, workdir and the values inside resources and
//     environment, where an empty value is almost always a mistake.
//   - Commands must be YAML strings. `- echo a: b` is a mapping to YAML and
//     `- 42` a number: both are errors, with a hint to quote them.
//   - Environment values may be strings, numbers or booleans; numbers and
//     booleans keep the text written in the file (`0x10` stays "0x10",
//     `1.50` stays "1.50").
//   - on.push maps branch names to actions. Names are compared exactly as
//     written, without globs or patterns: git forbids '*', '?' and '[' in
//     branch names, so they are refused here to catch an attempted glob.
//   - Sizes follow Docker's convention (`docker run --memory`, compose's
//     mem_limit): every suffix is a power of 1024, so 1k = 1kb = 1KiB = 1024
//     bytes and 1g = 1GB = 1GiB. A bare number is bytes. Docker refuses
//     memory limits under 6 MiB, and so does this parser.
//   - Action names match [a-z][a-z0-9_-]* and are at most 63 characters:
//     they appear in commit-status contexts (forge/<action>), labels and
//     FORGE_ACTION.
//   - secrets is a list of names, which every action gets, or a mapping of
//     action to such a list, for a secret only one action needs (a
//     deploy token kept from the pull requests' execute). Names match
//     [A-Z_][A-Z0-9_]*, at most 128 characters, appear once per list, are
//     not CI or FORGE_* and are not also in environment; the actions
//     named must exist.
package config

import "time"

const (
	// DefaultTimeout bounds a build when .forge.yml has no timeout.
	DefaultTimeout = time.Hour
	// MaxTimeout is the longest timeout a config may ask for.
	MaxTimeout = 24 * time.Hour
	// DefaultWorkdir is where the source is unpacked and the commands run
	// when .forge.yml has no workdir.
	DefaultWorkdir = "/forge/src"
	// DefaultAction is the action run for pull requests; every config
	// must define it.
	DefaultAction = "execute"

	// MaxSize is the largest .forge.yml accepted, in bytes. GitHub's
	// contents API returns files up to 1 MB inline, and a real config is
	// a few hundred bytes.
	MaxSize = 1 << 20
	// MaxValues bounds the number of YAML values in a document once its
	// aliases are expanded.
	MaxValues = 100_000

	// MinMemoryBytes is Docker's smallest accepted memory limit (6 MiB).
	MinMemoryBytes = 6 << 20
)

// Config is a parsed and validated .forge.yml. Defaults are filled in:
// Timeout and Workdir are always set.
type Config struct {
	// Image is the build image, as written (for example "golang:1.22").
	Image string
	// Environment holds variables given to every command. Keys are valid
	// environment names; FORGE_* and CI are reserved. Nil when absent.
	Environment map[string]string
	// Setup commands run before the action's commands.
	Setup []string
	// Actions maps an action name to its commands; "execute" is always
	// present.
	Actions map[string][]string
	// OnPush maps a branch name (exact, no globs) to the action a push to
	// it runs. Every action named exists in Actions. Nil when absent.
	OnPush map[string]string
	// Artifacts are relative paths or globs collected after the action.
	Artifacts []string
	// Timeout bounds the whole build: > 0 and <= MaxTimeout.
	Timeout time.Duration
	// Workdir is the absolute, clean directory holding the source.
	Workdir string
	// Resources are the task's limits (and reservations); zero means
	// unset.
	Resources Resources
	// Constraints are swarm placement constraints ("node.labels.ci==true").
	Constraints []string
	// Ports are published ports; whether they are allowed is the
	// coordinator's decision (--allow-ports), not the parser's.
	Ports []Port
	// Cache is kept between builds of the repository; nil when none.
	Cache *Cache `json:",omitempty"`
	// Secrets are repository secrets that every action's commands get as
	// environment variables (`secrets: [NAME, ...]`); ActionSecrets those
	// of each action (`secrets: {deploy: [NAME]}`). At most one is set.
	// Untrusted builds never get them.
	Secrets       []string            `json:",omitempty"`
	ActionSecrets map[string][]string `json:",omitempty"`
}

// SecretsFor lists the secrets a build of action gets, in the file's
// order; nil when none.
func (c *Config) SecretsFor(action string) []string {
	if c.ActionSecrets != nil {
		return c.ActionSecrets[action]
	}
	return c.Secrets
}

// Resources are the CPU and memory a build may use. Zero means unset.
type Resources struct {
	// NanoCPUs is CPUs in units of 1e-9 (cpus: 1.5 is 1_500_000_000).
	NanoCPUs int64
	// MemoryBytes is the memory limit in bytes.
	MemoryBytes int64
}

// Port is one published port.
type Port struct {
	// Published is the port on the swarm's routing mesh.
	Published uint16
	// Target is the port inside the container.
	Target uint16
	// Protocol is "tcp", "udp" or "sctp".
	Protocol string
}

// reservedKeys are the top-level keys that are not actions.
var reservedKeys = []string{
	"image", "environment", "setup", "on", "artifacts", "timeout",
	"workdir", "resources", "constraints", "ports", "secrets", "cache",
}
