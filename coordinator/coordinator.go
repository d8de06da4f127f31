// Package coordinator is Forge's coordinator domain (DESIGN §2, §3, §6): a
// build, its states, what asking for one takes, and the small interfaces
// between the parts. The parts live in sub-packages, one concern each:
//
//	lifecycle/  a build's life: create, land, launch, await, finish, recover
//	agents/     the agents' sessions, and the way to the agent of a node
//	logs/       build output on disk, and the exit recorded beside it
//	caches/     build caches: archives by digest, index, bound, scopes
//	store/      SQLite: builds, deliveries, agents
//	web/        the HTTP API, the pages and the metrics
//	github/     webhooks in, commit statuses out
//	config/     .forge.yml;  plan/  build -> swarm service spec (pure)
//	daemon/     the one place that wires them from one Config
package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/wire"
)

// State is where a build is in its life (DESIGN §2).
type State string

const (
	Queued  State = "queued"  // recorded, service not created yet
	Running State = "running" // service created; landing, launching or running
	Success State = "success"
	Failure State = "failure"
	Error   State = "error" // timeout, cancel, superseded, rejected image, infrastructure fault; Reason says which
)

// States lists every state, in life order.
var States = []State{Queued, Running, Success, Failure, Error}

// Final reports whether a build in state s is over: nothing may change its
// outcome any more.
func (s State) Final() bool {
	return s == Success || s == Failure || s == Error
}

// Valid reports whether s is one of the States.
func (s State) Valid() bool {
	switch s {
	case Queued, Running, Success, Failure, Error:
		return true
	}
	return false
}

// Subject is what a build builds and why; whoever asks for a build sets it.
type Subject struct {
	Owner, Repo    string
	PullRequest    int // 0 for pushes and `forge run`
	Branch         string
	SHA            string
	Ref            string
	Action         string
	CommitCount    int
	Fork           bool
	Trigger        string // "pull_request", "push", "run", "api"
	Key            string // supersede key: builds with the same key supersede each other ("" = never)
	InstallationID int64  // GitHub App installation, 0 when none
	// Public: the repository is public, so its builds are shown to anyone
	// (DESIGN §3). False when not known: closed by default.
	Public bool
	// Author is the GitHub login that opened the pull request ("" for
	// pushes and `forge run`).
	Author string
	// Untrusted: a pull request from a fork, or by an author who is not an
	// owner, member or collaborator. It runs sandboxed (plan.Options.Untrusted)
	// and must never be given secrets.
	Untrusted bool
	// NeedsApproval: the build waits, queued with ReasonAwaitingApproval,
	// until a person with write permission approves it (--require-approval).
	NeedsApproval bool
	// RerunOf is the build this one runs again (same SHA and action), ""
	// when it is no re-run; RerunBy is who asked (a GitHub login).
	RerunOf, RerunBy string
	// BaseBranch is a pull request's base branch, DefaultBranch the
	// repository's; "" when not known. They widen what caches a build
	// reads (CacheScopes).
	BaseBranch, DefaultBranch string
}

// Build is the record of one build: its subject and what became of it.
type Build struct {
	ID string // opaque, unique, sortable by time: "20261129T135301-3f9a2c"
	Subject
	Config      string // the .forge.yml text the build ran with
	State       State
	Reason      string // for people: why it is in this state ("superseded by abc1234", swarm's own message...)
	ExitCode    *int
	NodeID      string
	ContainerID string
	ServiceID   string
	ServiceName string
	Created     time.Time
	Started     time.Time // zero until the executor started
	Finished    time.Time // zero until final
	// ApprovedBy and Approved say who let a build that NeedsApproval run,
	// and when; empty until then. The approval is for this build (its SHA).
	ApprovedBy string
	Approved   time.Time
	// Ending says why a build ended as Error when that is one of the
	// Endings GitHub tells apart (a check run's conclusion); "" otherwise.
	Ending Ending
}

// Ending is why a build ended as Error, for reports that distinguish it
// (Reason says it in words for people).
type Ending string

const (
	EndCancelled  Ending = "cancelled"  // by a person, or its pull request closed
	EndSuperseded Ending = "superseded" // a newer build of its key replaced it
	EndTimedOut   Ending = "timed_out"  // it ran past its timeout
)

// ReasonAwaitingApproval is the Reason of a queued build that waits for a
// person's approval.
const ReasonAwaitingApproval = "awaiting approval"

// AwaitingApproval reports whether b waits for a person's approval.
func (b *Build) AwaitingApproval() bool {
	return b.State == Queued && b.NeedsApproval && b.ApprovedBy == ""
}

// ApprovalMode is which pull requests wait for approval (--require-approval).
type ApprovalMode string

const (
	ApproveForks ApprovalMode = "forks" // untrusted pull requests wait (the default)
	ApproveAll   ApprovalMode = "all"   // every pull request waits
	ApproveNone  ApprovalMode = "none"  // nothing waits
)

// ParseApprovalMode reads a --require-approval value; "" is ApproveForks.
func ParseApprovalMode(s string) (ApprovalMode, error) {
	switch m := ApprovalMode(s); m {
	case "":
		return ApproveForks, nil
	case ApproveForks, ApproveAll, ApproveNone:
		return m, nil
	}
	return "", fmt.Errorf("--require-approval %q: want forks, all or none", s)
}

// TrustedAssociation reports whether a pull request author's
// author_association (GitHub's webhook payload) makes them trusted.
func TrustedAssociation(a string) bool {
	switch a {
	case "OWNER", "MEMBER", "COLLABORATOR":
		return true
	}
	return false
}

// NeedsApproval reports whether a build of s waits for approval under m.
// Pushes never wait: only people with write access can push.
func (m ApprovalMode) NeedsApproval(s Subject) bool {
	if s.PullRequest == 0 {
		return false
	}
	switch m {
	case ApproveAll:
		return true
	case ApproveNone:
		return false
	}
	return s.Untrusted
}

// Clone is a deep copy of b (ExitCode is a pointer).
func (b *Build) Clone() *Build {
	c := *b
	if b.ExitCode != nil {
		e := *b.ExitCode
		c.ExitCode = &e
	}
	return &c
}

// Source produces a build's source tree as a tar stream of known size.
// It is called once, when the build's container is ready for it.
type Source func(ctx context.Context) (io.ReadCloser, int64, error)

// Request is a build to run.
type Request struct {
	Subject    Subject
	Config     *config.Config
	ConfigText string
	Source     Source // nil: no source
	// Node pins the build to a swarm node (forge run).
	Node string
	// Labels are added to the service and its container.
	Labels map[string]string
}

// Builds runs builds: the lifecycle is one; GitHub and the API use it.
type Builds interface {
	// Submit records a build, supersedes older active builds of its key,
	// and starts it; it returns the queued build.
	Submit(ctx context.Context, req Request) (*Build, error)
	// Cancel asks a build to stop; it ends as error with reason. A final
	// build gives ErrNotRunning.
	Cancel(ctx context.Context, id, reason string) error
	// CancelKey cancels every active build of key (a closed pull request).
	CancelKey(ctx context.Context, key, reason string)
	// Wait returns the build once it is final, or ctx's error.
	Wait(ctx context.Context, id string) (*Build, error)
	// Approve lets a build that awaits approval run, recording who; a
	// build that does not await approval gives ErrNotAwaiting.
	Approve(ctx context.Context, id, who string) (*Build, error)
}

// Swarm is the part of the manager's Engine API that runs builds, always
// through the manager's local socket.
type Swarm interface {
	ServiceCreate(ctx context.Context, spec swarm.ServiceSpec, opts swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error)
	ServiceRemove(ctx context.Context, id string) error
	ServiceList(ctx context.Context, opts swarm.ServiceListOptions) ([]swarm.Service, error)
	TaskList(ctx context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error)
}

// Agents is how the lifecycle reaches the agents; agents.Hub is the real
// one. Its shape is a task driver's (Nomad's StartTask, WaitTask,
// StopTask): every call names the node, and only that node's agent acts.
type Agents interface {
	// Landings reports, for one build, the containers agents saw created
	// for it; stop ends the watch.
	Landings(buildID string) (landed <-chan Landing, stop func())
	// WaitAgent returns when an agent session is bound to nodeID, or an
	// error wrapping ErrNoAgent when ctx ends first.
	WaitAgent(ctx context.Context, nodeID string) error
	// Launch has the agent of nodeID inject and start the build's container.
	Launch(ctx context.Context, nodeID string, req LaunchRequest) (*LaunchResult, error)
	// WaitExit delivers the build's exit, once it is reported (or was
	// before), on the channel; the channel is closed without one when ctx
	// ends.
	WaitExit(ctx context.Context, buildID string) (<-chan wire.Exit, error)
	// Cancel has the agent of nodeID stop the build's container.
	Cancel(ctx context.Context, nodeID, buildID, containerID string, grace time.Duration) (*wire.Cancelled, error)
	// Artifacts has the agent of nodeID copy the artifacts out of the
	// build's stopped container (PROTOCOL.md §6.5); put reads their tar,
	// at most req.MaxBytes, untrusted. It returns the agent's notes of
	// what it skipped or cut.
	Artifacts(ctx context.Context, nodeID string, req ArtifactsRequest, put func(tar io.Reader) error) (notes []string, err error)
}

// ArtifactsRequest is what the coordinator asks of the agent of a build's
// node once the build's exit is recorded.
type ArtifactsRequest struct {
	BuildID, ContainerID string
	Workdir              string   // absolute: what Paths are relative to
	Paths                []string // the config's artifacts: paths or globs
	MaxBytes             int64    // --max-artifacts-size
}

// ArtifactsStored is what was kept of a build's artifacts.
type ArtifactsStored struct {
	Files int   // files (and hard links) stored
	Bytes int64 // their bytes
	// Refused notes entries the coordinator's own check left out: an
	// honest agent sends none.
	Refused []string
}

// Landing is an agent's report that a build's container exists on its node.
type Landing struct{ Node, Container string }

// LaunchRequest is what a Launch sends: the build's container on the node,
// the executor, the spec, and optionally a tar of the source tree.
type LaunchRequest struct {
	BuildID, ContainerID string
	Executor             *Executor
	Spec                 []byte
	Workdir              string
	Source               io.Reader // tar stream of SourceSize bytes, or nil
	SourceSize           int64
	Cache                *CacheLaunch // nil: no cache
	// Secrets go to the agent with the Launch and into the container's
	// archive, never into its service spec; nil for untrusted builds.
	Secrets map[string][]byte
}

// LaunchResult is what a Launch did.
type LaunchResult struct {
	Started      wire.Started
	ExecutorSent bool // the agent lacked this executor and received it
}

// Executor is the forgexec binary with its digest, computed once.
type Executor struct {
	Bytes []byte
	Ref   wire.BlobRef
}

// NewExecutor computes b's digest.
func NewExecutor(b []byte) (*Executor, error) {
	ref, err := wire.BlobRefOf(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return &Executor{Bytes: b, Ref: ref}, nil
}

// LabelCoordinator carries the instance of the coordinator that created a
// build's service: a coordinator recovers only its own builds.
const LabelCoordinator = "forge.coordinator"

var (
	// ErrNotRunning: the build is final already.
	ErrNotRunning = errors.New("build is not running")
	// ErrNotAwaiting: the build does not await approval (it never needed
	// it, was approved already, or is over).
	ErrNotAwaiting = errors.New("build is not awaiting approval")
	// ErrNoAgent: no agent session is bound to the node.
	ErrNoAgent = errors.New("no agent on node")
	// ErrUnknownBuild: an agent spoke of a build the coordinator has no record of.
	ErrUnknownBuild = errors.New("unknown build")
	// ErrNotManager: the coordinator's engine is not a swarm manager.
	ErrNotManager = errors.New("this Docker engine is not a swarm manager")
	// ErrBadCredential: a credential that is malformed, unknown, revoked,
	// expired or forged, or a person's GitHub authorisation that GitHub no
	// longer takes.
	ErrBadCredential = errors.New("the credential was refused")
	// ErrNotRerunnable: a build cannot be re-run: it did not come from
	// GitHub, or its commit has no valid .forge.yml with its action any
	// more. The error wrapping it says which.
	ErrNotRerunnable = errors.New("the build cannot be re-run")
)

// buildIDPattern is what a build id may be: what makes it safe as a file
// name under --data (logs, artifacts).
var buildIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ValidBuildID reports whether id is a build id Forge could have made,
// and so safe to use as a file name.
func ValidBuildID(id string) bool { return buildIDPattern.MatchString(id) }
