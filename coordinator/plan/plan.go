// Package plan turns a build and its parsed .forge.yml into what the
// coordinator hands to Docker: the swarm service spec (DESIGN.md §2 step 4)
// and the executor's build spec, /.forge/build.json (step 6).
//
// Everything here is a pure function of its arguments, so the specs can be
// checked against golden files and the coordinator can recompute them.
//
// What never goes into a build container: a GitHub token, a certificate, the
// coordinator's address, a mount, a secret. The service carries only the
// image, the labels, the command /forgexec and the environment listed in
// DESIGN.md ("Environment of a build container").
package plan

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/forgexec"
	"github.com/forge-ci/forge/wire"
)

// Labels put on the service and on its container. The coordinator finds a
// build's service by them (supersede, restart recovery) and the agent checks
// LabelBuild before it injects anything.
const (
	LabelRepo        = wire.LabelRepo       // owner/repo
	LabelPullRequest = "forge.pull_request" // the number; absent for pushes
	LabelSHA         = "forge.sha"
	LabelBuild       = wire.LabelBuild // the build id
	LabelAction      = "forge.action"
)

// Environment variables Forge sets in every build container, besides CI.
const (
	EnvBuildID     = "FORGE_BUILD_ID"
	EnvAction      = "FORGE_ACTION"
	EnvOwner       = "FORGE_OWNER"
	EnvRepo        = "FORGE_REPO"
	EnvSHA         = "FORGE_SHA"
	EnvRef         = "FORGE_REF"
	EnvPullRequest = "FORGE_PULL_REQUEST" // pull requests only
	EnvCommitCount = "FORGE_COMMIT_COUNT"
)

// LogDriver is the log driver of build containers.
const LogDriver = "json-file"

// ExecutorPath is the container's command: the agent copies the executor
// there before starting the container.
const ExecutorPath = "/forgexec"

// Build is what the coordinator knows about one build when it plans it.
type Build struct {
	ID          string // build id, e.g. "b-01HX..." (opaque)
	Owner, Repo string
	PullRequest int    // 0 for a push
	Branch      string // for pushes (and the PR's head branch, informational)
	SHA         string
	Ref         string // e.g. refs/pull/7/head or refs/heads/main
	Action      string // "execute" for PRs, the on.push action for pushes
	CommitCount int
	Fork        bool      // not used by the plan: Options.Untrusted says what a fork may do
	Created     time.Time // used for the name's timestamp, UTC
}

// Options are the coordinator's settings that shape a service.
type Options struct {
	// AllowPorts lets configs publish ports (coordinator --allow-ports).
	AllowPorts bool
	// Node, when set, pins the task to this swarm node id (node.id==X):
	// `forge run` uses it to keep the build on its own machine.
	Node string
	// ExtraLabels are added to the service and its container (tests use
	// them to find what they created). They cannot replace Forge's own
	// labels.
	ExtraLabels map[string]string
	// Name is the service name. Empty means ServiceName(b, nil); a caller
	// that checks for collisions passes ServiceName(b, taken).
	Name string
	// Sandbox is what the operator allows builds; zero fields take
	// DefaultSandbox's values.
	Sandbox Sandbox
	// Untrusted marks an approved build of untrusted code (a fork or a
	// first-time contributor): its config may not widen the sandbox
	// (ports, constraints, resources or timeout beyond the defaults).
	Untrusted bool
	// HasWorkers says the swarm has a ready, active worker node: only
	// then are builds kept off managers (the plan cannot ask swarm).
	HasWorkers bool
}

// nodeIDRE matches swarm node ids; anything else in a constraint could
// change its meaning.
var nodeIDRE = regexp.MustCompile(`^[a-zA-Z0-9]+$`)

// dnsLabelRE is the form every service name has.
var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ServiceSpec returns the swarm service for build b: one replica of the
// config's image running /forgexec, never restarted, with Forge's labels,
// environment, resources, placement and (when allowed) ports, inside the
// operator's sandbox (limits, NET_RAW dropped, off managers when workers
// exist, a bounded engine log). A config asking for more than the sandbox
// allows is refused with an error wrapping ErrRefused that names its keys.
func ServiceSpec(b Build, cfg *config.Config, opt Options) (swarm.ServiceSpec, error) {
	fail := func(err error) (swarm.ServiceSpec, error) {
		return swarm.ServiceSpec{}, fmt.Errorf("plan service for build %s: %w", b.ID, err)
	}
	if err := check(b, cfg); err != nil {
		return fail(err)
	}
	sb := opt.Sandbox.withDefaults()
	if err := sb.Validate(); err != nil {
		return fail(err)
	}
	if refused := refusals(cfg, sb, opt); len(refused) > 0 {
		return fail(refused)
	}
	labels, err := labels(b, opt.ExtraLabels)
	if err != nil {
		return fail(err)
	}
	env, err := environment(b, cfg)
	if err != nil {
		return fail(err)
	}
	name := opt.Name
	if name == "" {
		name = ServiceName(b, nil)
	} else if !dnsLabelRE.MatchString(name) {
		return fail(fmt.Errorf("service name %q is not a DNS label of at most %d characters", name, MaxNameLen))
	}

	// Swarm's default restart policy starts a new task every 5 s after
	// the expected failed start (see notes/swarm-facts.md); a build runs
	// once.
	var zero uint64
	one := uint64(1)
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:  cfg.Image,
				Labels: maps.Clone(labels),
				// The image's own entrypoint never runs: the command does
				// not exist until the agent puts the executor there.
				Command: []string{ExecutorPath},
				Env:     env,
				// Docker's default capabilities stay (builds install
				// packages, chown, setuid); nothing is ever added.
				CapabilityDrop: slices.Clone(DroppedCapabilities),
				// No Init: forgexec is PID 1 and reaps, and a fork bomb
				// is held by the pids limit.
				// Dir stays empty: the executor reads the work directory
				// from build.json, creates it and changes into it, so the
				// directory is named in one place only. (Docker would
				// otherwise create it, as root, before the source arrives.)
			},
			RestartPolicy: &swarm.RestartPolicy{
				Condition:   swarm.RestartPolicyConditionNone,
				MaxAttempts: &zero,
			},
			// The agent reads a build's output back from the engine's log
			// of the container, and re-reads it from a given offset after
			// a lost session or its own restart; that needs a driver the
			// engine can read back, whatever the cluster's default is.
			// Bounded, so a build printing without end cannot fill the
			// node's disk.
			LogDriver: &swarm.Driver{Name: LogDriver, Options: logOptions(sb)},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
	}

	// Every build is limited; the config may choose other limits within
	// the operator's maximum (refusals checked it). Reserving what the
	// config asked for means such a build only lands on a node that can
	// give it all of it; the defaults reserve nothing, so small nodes
	// still take default builds.
	r := cfg.Resources
	spec.TaskTemplate.Resources = &swarm.ResourceRequirements{
		Limits: &swarm.Limit{
			NanoCPUs:    orDefault(r.NanoCPUs, sb.NanoCPUs),
			MemoryBytes: orDefault(r.MemoryBytes, sb.Memory),
			Pids:        sb.Pids,
		},
	}
	if r.NanoCPUs > 0 || r.MemoryBytes > 0 {
		spec.TaskTemplate.Resources.Reservations = &swarm.Resources{NanoCPUs: r.NanoCPUs, MemoryBytes: r.MemoryBytes}
	}

	constraints := slices.Clone(cfg.Constraints)
	if opt.Node != "" {
		if !nodeIDRE.MatchString(opt.Node) {
			return fail(fmt.Errorf("node %q is not a swarm node id", opt.Node))
		}
		constraints = append(constraints, "node.id=="+opt.Node)
	}
	if offManagers(sb, opt) {
		// A manager holds the swarm's Raft keys and the coordinator.
		constraints = append(constraints, "node.role==worker")
	}
	if len(constraints) > 0 {
		spec.TaskTemplate.Placement = &swarm.Placement{Constraints: constraints}
	}

	if len(cfg.Ports) > 0 { // refusals checked AllowPorts and Untrusted
		ports := make([]swarm.PortConfig, 0, len(cfg.Ports))
		for _, p := range cfg.Ports {
			ports = append(ports, swarm.PortConfig{
				Protocol:      swarm.PortConfigProtocol(p.Protocol),
				TargetPort:    uint32(p.Target),
				PublishedPort: uint32(p.Published),
				PublishMode:   swarm.PortConfigPublishModeIngress,
			})
		}
		spec.EndpointSpec = &swarm.EndpointSpec{Ports: ports}
	}
	return spec, nil
}

// ExecutorSpec returns the build spec the agent writes to
// /.forge/build.json: the setup commands, the action's commands, the work
// directory and the timeout.
//
// Env is left empty: the container's environment already holds the
// FORGE_* variables, CI and the config's environment, and the executor
// passes it on to the commands. Repeating them here would give the same
// values two places to disagree.
func ExecutorSpec(b Build, cfg *config.Config) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("plan executor spec for build %s: %w", b.ID, err)
	}
	if err := check(b, cfg); err != nil {
		return fail(err)
	}
	spec := forgexec.Spec{
		Version:  forgexec.SpecVersion,
		BuildID:  b.ID,
		Action:   b.Action,
		Setup:    cfg.Setup,
		Commands: cfg.Actions[b.Action],
		Workdir:  orDefault(cfg.Workdir, config.DefaultWorkdir),
		Timeout:  forgexec.Duration(orDefault(cfg.Timeout, config.DefaultTimeout)),
	}
	// The executor refuses an invalid spec inside the container, where the
	// failure is harder to explain; refuse it here instead.
	if err := spec.Validate(); err != nil {
		return fail(err)
	}
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fail(err)
	}
	return append(data, '\n'), nil
}

// orDefault returns v, or def when v is the zero value: a Config built by hand
// rather than by config.Parse may leave defaults unset.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// check refuses builds and configs the specs cannot be made from.
func check(b Build, cfg *config.Config) error {
	switch {
	case cfg == nil:
		return errors.New("no config")
	case cfg.Image == "":
		return errors.New("config has no image")
	case b.ID == "":
		return errors.New("build has no id")
	case b.Owner == "" || b.Repo == "":
		return errors.New("build has no owner/repo")
	case b.SHA == "":
		return errors.New("build has no commit sha")
	case b.PullRequest < 0:
		return fmt.Errorf("pull request number %d is negative", b.PullRequest)
	case b.Action == "":
		return errors.New("build has no action")
	}
	if len(cfg.Actions[b.Action]) == 0 {
		return fmt.Errorf("action %q is not defined in the config", b.Action)
	}
	return nil
}

// labels returns Forge's labels for b merged with extra.
func labels(b Build, extra map[string]string) (map[string]string, error) {
	l := map[string]string{
		LabelRepo:   b.Owner + "/" + b.Repo,
		LabelSHA:    b.SHA,
		LabelBuild:  b.ID,
		LabelAction: b.Action,
	}
	if b.PullRequest > 0 {
		l[LabelPullRequest] = strconv.Itoa(b.PullRequest)
	}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		switch k {
		case LabelRepo, LabelPullRequest, LabelSHA, LabelBuild, LabelAction:
			// The agent trusts forge.build to decide which container it
			// may start; no caller may forge it.
			return nil, fmt.Errorf("extra label %s would replace one of Forge's own", k)
		}
		l[k] = extra[k]
	}
	return l, nil
}

// environment returns the container's environment, sorted so that equal
// builds give byte-identical specs.
func environment(b Build, cfg *config.Config) ([]string, error) {
	env := map[string]string{
		EnvBuildID:     b.ID,
		EnvAction:      b.Action,
		EnvOwner:       b.Owner,
		EnvRepo:        b.Repo,
		EnvSHA:         b.SHA,
		EnvRef:         b.Ref,
		EnvCommitCount: strconv.Itoa(b.CommitCount),
		"CI":           "true",
	}
	if b.PullRequest > 0 {
		env[EnvPullRequest] = strconv.Itoa(b.PullRequest)
	}
	for k, v := range cfg.Environment {
		// config.Parse already refuses these; a hand-made Config must not
		// be able to override what Forge sets either.
		if config.ReservedVar(k) {
			return nil, fmt.Errorf("environment: %s is reserved", k)
		}
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("environment: invalid variable %q", k)
		}
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out, nil
}
