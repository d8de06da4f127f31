package forgexec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SpecPath is where the agent writes the build spec inside the container.
const SpecPath = "/.forge/build.json"

// SpecVersion is the only spec version this executor understands. The agent
// and the executor it injects ship together, so a mismatch means a bug or a
// stale binary, and refusing is safer than guessing.
const SpecVersion = 1

// DefaultWorkdir is the work directory used when a spec does not name one.
const DefaultWorkdir = "/forge/src"

// Spec is the build spec, the JSON document the agent writes at [SpecPath].
// Unknown fields are rejected when decoding, so a field added on the agent's
// side without a matching executor is noticed instead of silently ignored.
type Spec struct {
	// Version is the schema version and must be [SpecVersion] (1). It is
	// required.
	Version int `json:"version"`

	// BuildID identifies the build. It is exported to the commands as
	// FORGE_BUILD_ID unless the container's environment already has it.
	// Optional.
	BuildID string `json:"build_id"`

	// Action is the name of the action being run, for example "execute" or
	// "deploy". It is exported to the commands as FORGE_ACTION unless the
	// container's environment already has it. Optional.
	Action string `json:"action"`

	// Setup commands run first, in order, before Commands. Optional.
	Setup []string `json:"setup,omitempty"`

	// Commands are the action's commands, run in order after Setup. At
	// least one is required.
	Commands []string `json:"commands"`

	// Env holds variables added on top of the container's own environment
	// (a key present in both takes the value from Env). Optional.
	Env map[string]string `json:"env,omitempty"`

	// Workdir is the directory the commands run in. It must be absolute
	// and is created (mode 0755) if missing. Default [DefaultWorkdir]
	// ("/forge/src").
	Workdir string `json:"workdir,omitempty"`

	// Timeout bounds the whole build (setup and commands) as a Go duration
	// string such as "30m". Zero or absent means no limit; negative values
	// are invalid. On expiry the build stops with exit code 124.
	Timeout Duration `json:"timeout,omitempty"`
}

// WorkdirOrDefault returns Workdir, or [DefaultWorkdir] when it is empty.
func (s *Spec) WorkdirOrDefault() string {
	if s.Workdir == "" {
		return DefaultWorkdir
	}
	return s.Workdir
}

// Validate checks the spec's fields. Errors name the offending field.
func (s *Spec) Validate() error {
	if s == nil {
		return errors.New("spec is missing")
	}
	switch {
	case s.Version == 0:
		return fmt.Errorf("version: missing, want %d", SpecVersion)
	case s.Version != SpecVersion:
		return fmt.Errorf("version: unsupported version %d, want %d", s.Version, SpecVersion)
	}
	if len(s.Commands) == 0 {
		return errors.New("commands: at least one command is required")
	}
	if err := checkCommands("setup", s.Setup); err != nil {
		return err
	}
	if err := checkCommands("commands", s.Commands); err != nil {
		return err
	}
	for k, v := range s.Env {
		// These would make an environment entry that the kernel or the
		// child cannot read back as the intended KEY=value.
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("env: invalid variable name %q", k)
		}
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("env: value of %s contains a NUL byte", k)
		}
	}
	if s.Workdir != "" && !filepath.IsAbs(s.Workdir) {
		return fmt.Errorf("workdir: must be an absolute path, got %q", s.Workdir)
	}
	if s.Timeout < 0 {
		return fmt.Errorf("timeout: must not be negative, got %s", time.Duration(s.Timeout))
	}
	return nil
}

// checkCommands rejects blank commands and NUL bytes: a blank command would
// mean "do nothing" with a shell but is an error without one, so it is
// refused in both modes; a NUL byte cannot be passed to execve.
func checkCommands(field string, cmds []string) error {
	for i, c := range cmds {
		if strings.TrimSpace(c) == "" {
			return fmt.Errorf("%s[%d]: empty command", field, i)
		}
		if strings.ContainsRune(c, 0) {
			return fmt.Errorf("%s[%d]: contains a NUL byte", field, i)
		}
	}
	return nil
}

// DecodeSpec reads one JSON spec from r and validates it. Unknown fields,
// trailing data after the object and invalid values are errors.
func DecodeSpec(r io.Reader) (*Spec, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		// encoding/json returns an Unmarshaler's error unchanged, without
		// the field name; Duration is only used by the timeout field.
		var de *durationError
		if errors.As(err, &de) {
			return nil, fmt.Errorf("decode spec: timeout: %w", err)
		}
		return nil, fmt.Errorf("decode spec: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("decode spec: unexpected data after the JSON object")
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("invalid spec: %w", err)
	}
	return &s, nil
}

// LoadSpec reads and validates the spec file at path.
func LoadSpec(path string) (*Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read spec %s: %w", path, err)
	}
	defer f.Close()
	s, err := DecodeSpec(f)
	if err != nil {
		return nil, fmt.Errorf("spec %s: %w", path, err)
	}
	return s, nil
}

// Duration is a [time.Duration] that is written to JSON as a Go duration
// string ("1h0m0s") and read from one ("30m", "1h30m", "90s").
type Duration time.Duration

// String returns the duration in Go's notation, for example "30m0s".
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a string such as "1h0m0s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string. JSON numbers are refused: a bare
// number has no unit and would be read as nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &durationError{fmt.Sprintf("want a duration string like \"30m\", got %s", b)}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &durationError{err.Error()}
	}
	*d = Duration(v)
	return nil
}

// durationError marks errors from Duration.UnmarshalJSON so that DecodeSpec
// can name the field.
type durationError struct{ msg string }

func (e *durationError) Error() string { return e.msg }
