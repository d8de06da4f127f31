package plan

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator/config"
)

// Sandbox is what the operator allows every build service (the
// coordinator's --build-* flags). A zero field takes DefaultSandbox's
// value, so a caller that sets nothing still gets the safe defaults.
type Sandbox struct {
	// Memory, NanoCPUs and Pids are every build's limits when its
	// .forge.yml asks for none (Pids always: configs cannot set it).
	Memory   int64 // bytes
	NanoCPUs int64 // CPUs in units of 1e-9
	Pids     int64
	// MaxMemory and MaxNanoCPUs bound what a trusted .forge.yml may ask
	// for in resources:, and MaxTimeout its timeout.
	MaxMemory   int64
	MaxNanoCPUs int64
	MaxTimeout  time.Duration
	// BuildsOnManagers lets builds land on manager nodes even when the
	// swarm has a ready worker.
	BuildsOnManagers bool
	// LogMaxSize and LogMaxFile bound the engine's json-file log of a
	// build container (the driver's max-size and max-file options).
	LogMaxSize string
	LogMaxFile int
}

// Defaults of the sandbox; README.md ("The build sandbox") lists them.
const (
	DefaultMemory      = 4 << 30
	DefaultNanoCPUs    = 2e9
	DefaultPids        = 4096
	DefaultMaxMemory   = 8 << 30
	DefaultMaxNanoCPUs = 4e9
	DefaultMaxTimeout  = 6 * time.Hour
	DefaultLogMaxSize  = "10m"
	DefaultLogMaxFile  = 3
)

// DroppedCapabilities are removed from Docker's default set in every build
// container: NET_RAW allows forged packets (ARP and DNS spoofing on the
// node's networks) and no build needs it beyond ping.
var DroppedCapabilities = []string{"CAP_NET_RAW"}

// DefaultSandbox returns the sandbox used when the operator sets nothing.
func DefaultSandbox() Sandbox {
	return Sandbox{
		Memory: DefaultMemory, NanoCPUs: DefaultNanoCPUs, Pids: DefaultPids,
		MaxMemory: DefaultMaxMemory, MaxNanoCPUs: DefaultMaxNanoCPUs, MaxTimeout: DefaultMaxTimeout,
		LogMaxSize: DefaultLogMaxSize, LogMaxFile: DefaultLogMaxFile,
	}
}

// withDefaults fills zero fields from DefaultSandbox. A maximum left zero
// never falls below the limit it bounds, so raising only --build-memory
// does not make every default build refused.
func (s Sandbox) withDefaults() Sandbox {
	d := DefaultSandbox()
	s.Memory = orDefault(s.Memory, d.Memory)
	s.NanoCPUs = orDefault(s.NanoCPUs, d.NanoCPUs)
	s.Pids = orDefault(s.Pids, d.Pids)
	s.MaxMemory = orDefault(s.MaxMemory, max(d.MaxMemory, s.Memory))
	s.MaxNanoCPUs = orDefault(s.MaxNanoCPUs, max(d.MaxNanoCPUs, s.NanoCPUs))
	s.MaxTimeout = orDefault(s.MaxTimeout, d.MaxTimeout)
	s.LogMaxSize = orDefault(s.LogMaxSize, d.LogMaxSize)
	s.LogMaxFile = orDefault(s.LogMaxFile, d.LogMaxFile)
	return s
}

// Validate reports a sandbox that cannot be applied: a limit above its
// maximum, a maximum timeout outside what configs can ask for, a bad log
// option. Zero fields are checked as their defaults.
func (s Sandbox) Validate() error {
	s = s.withDefaults()
	var bad []string
	switch {
	case s.Memory < config.MinMemoryBytes || s.MaxMemory < config.MinMemoryBytes:
		bad = append(bad, "memory limits must be at least Docker's minimum of 6MiB")
	case s.Memory > s.MaxMemory:
		bad = append(bad, fmt.Sprintf("memory limit %s is above the maximum of %s", config.FormatMemory(s.Memory), config.FormatMemory(s.MaxMemory)))
	}
	switch {
	case s.NanoCPUs < 0 || s.MaxNanoCPUs < 0:
		bad = append(bad, "CPU limits must be more than 0")
	case s.NanoCPUs > s.MaxNanoCPUs:
		bad = append(bad, fmt.Sprintf("CPU limit %s is above the maximum of %s", config.FormatCPUs(s.NanoCPUs), config.FormatCPUs(s.MaxNanoCPUs)))
	}
	if s.Pids < 0 {
		bad = append(bad, "process limit must be more than 0")
	}
	// A config without a timeout gets config.DefaultTimeout; a maximum
	// below it would refuse every such config.
	if s.MaxTimeout < config.DefaultTimeout || s.MaxTimeout > config.MaxTimeout {
		bad = append(bad, fmt.Sprintf("maximum timeout %s is outside %s to %s", shortDuration(s.MaxTimeout), shortDuration(config.DefaultTimeout), shortDuration(config.MaxTimeout)))
	}
	if _, err := config.ParseMemory(s.LogMaxSize); err != nil {
		bad = append(bad, fmt.Sprintf("log max-size %q: %v", s.LogMaxSize, err))
	}
	if s.LogMaxFile < 1 {
		bad = append(bad, "log max-file must be at least 1")
	}
	if len(bad) > 0 {
		return fmt.Errorf("sandbox: %s", strings.Join(bad, "; "))
	}
	return nil
}

// ErrRefused classifies a build whose .forge.yml asks for more than this
// coordinator allows it; the error names the key.
var ErrRefused = errors.New("refused by the coordinator")

// Refusal is one key of a .forge.yml the coordinator will not honour.
type Refusal struct {
	Key    string // the .forge.yml key, e.g. resources.memory
	Reason string
}

func (r *Refusal) Error() string        { return r.Key + ": " + r.Reason }
func (r *Refusal) Is(target error) bool { return target == ErrRefused }

// Refusals are all the refused keys of one config, reported at once so
// that one push can fix them all.
type Refusals []*Refusal

func (rs Refusals) Error() string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.Error()
	}
	return strings.Join(s, "; ")
}

func (rs Refusals) Unwrap() []error {
	out := make([]error, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

// untrusted names why an untrusted build's key is refused.
const untrusted = "this build is untrusted (a pull request from a fork or a first-time contributor)"

// refusals checks the config's wishes against the sandbox; s has its
// defaults filled in.
func refusals(cfg *config.Config, s Sandbox, opt Options) Refusals {
	var out Refusals
	refuse := func(key, format string, args ...any) {
		out = append(out, &Refusal{Key: key, Reason: fmt.Sprintf(format, args...)})
	}
	r := cfg.Resources
	timeout := orDefault(cfg.Timeout, config.DefaultTimeout)
	if opt.Untrusted {
		if r.MemoryBytes > s.Memory {
			refuse("resources.memory", "%s is above the default of %s, and %s cannot ask for more", config.FormatMemory(r.MemoryBytes), config.FormatMemory(s.Memory), untrusted)
		}
		if r.NanoCPUs > s.NanoCPUs {
			refuse("resources.cpus", "%s is above the default of %s, and %s cannot ask for more", config.FormatCPUs(r.NanoCPUs), config.FormatCPUs(s.NanoCPUs), untrusted)
		}
		if timeout > config.DefaultTimeout {
			refuse("timeout", "%s is above the default of %s, and %s cannot ask for more", shortDuration(timeout), shortDuration(config.DefaultTimeout), untrusted)
		}
		if len(cfg.Constraints) > 0 {
			refuse("constraints", "%s: it cannot choose its placement", untrusted)
		}
		if len(cfg.Ports) > 0 {
			refuse("ports", "%s: it cannot publish ports, even with --allow-ports", untrusted)
		}
	} else {
		if r.MemoryBytes > s.MaxMemory {
			refuse("resources.memory", "%s is above this coordinator's maximum of %s", config.FormatMemory(r.MemoryBytes), config.FormatMemory(s.MaxMemory))
		}
		if r.NanoCPUs > s.MaxNanoCPUs {
			refuse("resources.cpus", "%s is above this coordinator's maximum of %s", config.FormatCPUs(r.NanoCPUs), config.FormatCPUs(s.MaxNanoCPUs))
		}
		if timeout > s.MaxTimeout {
			refuse("timeout", "%s is above this coordinator's maximum of %s", shortDuration(timeout), shortDuration(s.MaxTimeout))
		}
		if len(cfg.Ports) > 0 && !opt.AllowPorts {
			refuse("ports", "this coordinator does not let builds publish ports (start it with --allow-ports)")
		}
	}
	if offManagers(s, opt) {
		for _, c := range cfg.Constraints {
			if wantsManager(c) {
				refuse("constraints", "%q: builds stay off manager nodes on this coordinator while the swarm has a ready worker (unless it runs with --builds-on-managers)", c)
			}
		}
	}
	return out
}

// offManagers reports whether the build gets the node.role==worker
// constraint: only when a worker can take it, and never for `forge run`,
// which pins its own node.
func offManagers(s Sandbox, opt Options) bool {
	return opt.HasWorkers && !s.BuildsOnManagers && opt.Node == ""
}

// wantsManager reports whether constraint c asks for a manager node, which
// the added node.role==worker would make unplaceable.
func wantsManager(c string) bool {
	for _, op := range []string{"==", "!="} {
		k, v, ok := strings.Cut(c, op)
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "node.role") {
			continue
		}
		v = strings.ToLower(strings.TrimSpace(v))
		return (op == "==" && v == "manager") || (op == "!=" && v == "worker")
	}
	return false
}

// logOptions are the json-file options that bound the engine's log.
func logOptions(s Sandbox) map[string]string {
	return map[string]string{"max-size": s.LogMaxSize, "max-file": strconv.Itoa(s.LogMaxFile)}
}

// shortDuration writes 2h rather than 2h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
