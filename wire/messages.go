package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"reflect"
	"sort"
	"time"
)

// Message is one frame's content. Each message struct names its type (a
// Type* constant) through MessageType; encoding puts that name in the
// frame's "type" field and decoding looks it up in one registry. Both the
// struct and a pointer to it satisfy Message; decoding returns pointers.
type Message interface {
	MessageType() string
}

// validator is implemented by messages with rules beyond their JSON shape.
// EncodeMessage and DecodeMessage both enforce them, so a peer that breaks
// a rule is stopped at the edge.
type validator interface {
	Validate() error
}

// Hello opens the control stream (PROTOCOL.md §5.1, §6.1).
type Hello struct {
	Protocol      int    `json:"protocol"`       // ProtocolVersion of the agent
	NodeID        string `json:"node_id"`        // swarm node id of the agent's node
	Hostname      string `json:"hostname"`       // node host name, for people
	AgentVersion  string `json:"agent_version"`  // forge version of the agent
	EngineVersion string `json:"engine_version"` // Docker Engine version of the node
	// Features names what this agent can do beyond protocol 1's base
	// (FeatureCache); optional, so older peers ignore it.
	Features []string `json:"features,omitempty"`
}

// Welcome accepts a session (PROTOCOL.md §5.2).
type Welcome struct {
	Protocol           int    `json:"protocol"`            // ProtocolVersion of the coordinator
	CoordinatorVersion string `json:"coordinator_version"` // forge version of the coordinator
	SessionID          string `json:"session_id"`          // names this session in both sides' logs
}

// Refused refuses a session, a request or a frame (PROTOCOL.md §5.3).
// Expect returns one received in place of another message as *RefusedError.
type Refused struct {
	Code    string `json:"code"`    // one of the Refused* constants
	Message string `json:"message"` // for people; both sides log it
}

// NewRefused returns a Refused with code and a formatted message.
func NewRefused(code, format string, args ...any) *Refused {
	return &Refused{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ProtocolRefusal returns the coordinator's answer to a Hello whose
// protocol version is agentProtocol: nil when it matches ProtocolVersion,
// otherwise a Refused{Code: RefusedProtocol} that names both versions.
func ProtocolRefusal(agentProtocol int) *Refused {
	if agentProtocol == ProtocolVersion {
		return nil
	}
	return NewRefused(RefusedProtocol,
		"protocol version mismatch: agent speaks %d, coordinator speaks %d; run the same forge version on both",
		agentProtocol, ProtocolVersion)
}

// Holding lists the builds the agent holds (PROTOCOL.md §5.4).
type Holding struct {
	Builds []Held `json:"builds"`
}

// Held is one build in Holding.
type Held struct {
	BuildID     string `json:"build_id"`
	ContainerID string `json:"container_id"`
	State       string `json:"state"`     // StateRunning or StateExited
	ExitCode    *int   `json:"exit_code"` // set exactly when State is StateExited
}

// Landed says a build's container was created on the agent's node
// (PROTOCOL.md §5.5).
type Landed struct {
	BuildID     string    `json:"build_id"`
	ContainerID string    `json:"container_id"`
	Created     time.Time `json:"created"` // when Docker created the container
}

// BlobRef names raw bytes that follow on a stream (PROTOCOL.md §4.2).
type BlobRef struct {
	Digest string `json:"digest"` // "sha256:<64 lower-case hex digits>"
	Size   int64  `json:"size"`   // bytes
}

// Launch asks the agent to inject and start a build's container
// (PROTOCOL.md §5.6, §6.2).
type Launch struct {
	BuildID     string          `json:"build_id"`
	ContainerID string          `json:"container_id"`
	Executor    BlobRef         `json:"executor"`
	Spec        json.RawMessage `json:"spec"`        // build.json, at most MaxSpecSize
	SourceSize  int64           `json:"source_size"` // raw tar bytes that follow; 0 = none
	Workdir     string          `json:"workdir"`     // absolute; where the source is unpacked
	// Cache, optional, restores and saves the build's cache
	// (PROTOCOL.md §6.8); sent only to agents with FeatureCache.
	Cache *LaunchCache `json:"cache,omitempty"`
	// Secrets go into the container inside the archive, never into its
	// configuration (PROTOCOL.md §5.6, §6.2). Empty for untrusted builds.
	Secrets []Secret `json:"secrets,omitempty"`
}

// Secret is one repository secret a Launch carries to the build's
// commands as an environment variable (PROTOCOL.md §5.6).
type Secret struct {
	Name  string      `json:"name"`
	Value SecretValue `json:"value"` // base64 in JSON
}

// SecretValue is a secret's bytes. It prints as *** with every fmt verb,
// so no log line or error that formats a Launch shows one.
type SecretValue []byte

// Format prints *** whatever the verb.
func (SecretValue) Format(f fmt.State, _ rune) { io.WriteString(f, "***") }

// LaunchReady accepts a Launch (PROTOCOL.md §5.7).
type LaunchReady struct {
	NeedExecutor bool `json:"need_executor"` // false: the agent has this executor already
}

// Started says the build's container runs (PROTOCOL.md §5.8).
type Started struct {
	ContainerID string    `json:"container_id"`
	StartedAt   time.Time `json:"started_at"`
}

// Cancel asks the agent to stop a build's container (PROTOCOL.md §5.9, §6.3).
type Cancel struct {
	BuildID      string `json:"build_id"`
	ContainerID  string `json:"container_id"`
	GraceSeconds int    `json:"grace_seconds"` // between SIGTERM and SIGKILL
}

// Cancelled says the container is stopped (PROTOCOL.md §5.10).
type Cancelled struct {
	ExitCode *int `json:"exit_code"` // nil when it had never started
}

// Attach opens a log stream (PROTOCOL.md §5.11, §6.4).
type Attach struct {
	BuildID     string `json:"build_id"`
	ContainerID string `json:"container_id"`
}

// Attached says what the coordinator has stored of a build, so the agent
// resumes there (PROTOCOL.md §5.12, §6.4).
type Attached struct {
	NextSeq      uint64 `json:"next_seq"`      // the Seq of the next Log
	StdoutOffset int64  `json:"stdout_offset"` // bytes of stdout stored
	StderrOffset int64  `json:"stderr_offset"` // bytes of stderr stored
	Done         bool   `json:"done"`          // the exit is recorded already
	// Cache, when set, is the cache the coordinator still waits for from
	// the build: its launch's paths and bound, with Save and no Size. An
	// agent that restarted since the launch learns it here (§6.8).
	Cache *LaunchCache `json:"cache,omitempty"`
}

// Log is a chunk of a build's output (PROTOCOL.md §5.13).
type Log struct {
	Seq    uint64 `json:"seq"`    // 1, 2, 3, ... per build
	Stream string `json:"stream"` // StreamStdout or StreamStderr
	Offset int64  `json:"offset"` // byte offset of Data within Stream
	Data   []byte `json:"data"`   // at most MaxLogChunk bytes
}

// LogAck acknowledges Log frames cumulatively (PROTOCOL.md §5.14).
type LogAck struct {
	Seq uint64 `json:"seq"` // highest Seq stored
}

// Exit is the agent's last frame on a log stream (PROTOCOL.md §5.15).
type Exit struct {
	ExitCode   int       `json:"exit_code"` // -1 when unknown (see Error)
	LastSeq    uint64    `json:"last_seq"`  // Seq of the last Log sent; 0 if none
	FinishedAt time.Time `json:"finished_at"`
	Error      string    `json:"error"` // why the agent could not run or follow the container; empty for a normal exit
}

// ExitAck says the exit and all output are recorded (PROTOCOL.md §5.16).
type ExitAck struct{}

// ArtifactsRequest asks for a finished build's artifacts (PROTOCOL.md
// §5.17, §6.5).
type ArtifactsRequest struct {
	BuildID     string   `json:"build_id"`
	ContainerID string   `json:"container_id"`
	Workdir     string   `json:"workdir"`   // absolute; what paths are relative to, and the folder links must stay in
	Paths       []string `json:"paths"`     // paths or globs relative to the work directory
	MaxBytes    int64    `json:"max_bytes"` // the largest tar accepted
}

// ArtifactsHeader precedes the artifacts' tar (PROTOCOL.md §5.18).
type ArtifactsHeader struct {
	Size  int64    `json:"size"`  // raw tar bytes that follow
	Notes []string `json:"notes"` // what was skipped or cut, for the build's log
}

// Join asks for an agent's first certificate, on a session without a
// client certificate (PROTOCOL.md §5.19, §6.6).
type Join struct {
	Protocol int    `json:"protocol"` // ProtocolVersion of the agent
	Token    string `json:"token"`    // the cluster's join token
	NodeID   string `json:"node_id"`  // the swarm node id the agent speaks for
	CSR      []byte `json:"csr"`      // PKCS#10, DER
}

// Renew asks for a new certificate for the session's node (PROTOCOL.md
// §5.20, §6.7).
type Renew struct {
	CSR []byte `json:"csr"` // PKCS#10, DER
}

// Issued answers Join or Renew with a certificate (PROTOCOL.md §5.21).
type Issued struct {
	Certificate []byte `json:"certificate"` // X.509, DER, signed by the forge CA
}

func (Hello) MessageType() string            { return TypeHello }
func (Welcome) MessageType() string          { return TypeWelcome }
func (Refused) MessageType() string          { return TypeRefused }
func (Holding) MessageType() string          { return TypeHolding }
func (Landed) MessageType() string           { return TypeLanded }
func (Launch) MessageType() string           { return TypeLaunch }
func (LaunchReady) MessageType() string      { return TypeLaunchReady }
func (Started) MessageType() string          { return TypeStarted }
func (Cancel) MessageType() string           { return TypeCancel }
func (Cancelled) MessageType() string        { return TypeCancelled }
func (Attach) MessageType() string           { return TypeAttach }
func (Attached) MessageType() string         { return TypeAttached }
func (Log) MessageType() string              { return TypeLog }
func (LogAck) MessageType() string           { return TypeLogAck }
func (Exit) MessageType() string             { return TypeExit }
func (ExitAck) MessageType() string          { return TypeExitAck }
func (ArtifactsRequest) MessageType() string { return TypeArtifactsRequest }
func (ArtifactsHeader) MessageType() string  { return TypeArtifactsHeader }
func (Join) MessageType() string             { return TypeJoin }
func (Renew) MessageType() string            { return TypeRenew }
func (Issued) MessageType() string           { return TypeIssued }
func (CacheSave) MessageType() string        { return TypeCacheSave }
func (CacheReady) MessageType() string       { return TypeCacheReady }
func (CacheSaved) MessageType() string       { return TypeCacheSaved }

// registry maps each type name to its struct type. It is the one list of
// messages this version understands.
var registry = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, p := range []Message{
		Hello{}, Welcome{}, Refused{}, Holding{}, Landed{},
		Launch{}, LaunchReady{}, Started{}, Cancel{}, Cancelled{},
		Attach{}, Attached{}, Log{}, LogAck{}, Exit{}, ExitAck{},
		ArtifactsRequest{}, ArtifactsHeader{},
		Join{}, Renew{}, Issued{},
		CacheSave{}, CacheReady{}, CacheSaved{},
	} {
		if _, dup := m[p.MessageType()]; dup {
			panic("wire: message type registered twice: " + p.MessageType())
		}
		m[p.MessageType()] = reflect.TypeOf(p)
	}
	return m
}()

// registeredTypes returns the registered type names, sorted.
func registeredTypes() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// EncodeMessage returns msg as a frame payload: one JSON object whose
// "type" field comes first. msg must be a registered message (a struct
// or a non-nil pointer to one) that passes its validation, and the result
// must fit MaxFrameSize.
func EncodeMessage(msg Message) ([]byte, error) {
	if msg == nil {
		return nil, fmt.Errorf("%w: nil message", ErrInvalidMessage)
	}
	rv := reflect.ValueOf(msg)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil, fmt.Errorf("%w: nil %T", ErrInvalidMessage, msg)
		}
		rv = rv.Elem()
	}
	typ := msg.MessageType()
	if registry[typ] != rv.Type() {
		return nil, fmt.Errorf("%w: %T (type %q) is not a registered message", ErrUnknownType, msg, typ)
	}
	if v, ok := msg.(validator); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("wire: encode %s: %w", typ, err)
	}
	var buf bytes.Buffer
	buf.Grow(len(typ) + len(body) + 12)
	buf.WriteString(`{"type":`)
	name, _ := json.Marshal(typ)
	buf.Write(name)
	if len(body) > 2 { // not "{}"
		buf.WriteByte(',')
	}
	buf.Write(body[1:])
	if buf.Len() > MaxFrameSize {
		return nil, fmt.Errorf("%w: %s encodes to %d bytes, max %d", ErrFrameTooLarge, typ, buf.Len(), MaxFrameSize)
	}
	return buf.Bytes(), nil
}

// DecodeMessage decodes a frame payload into a pointer to the registered
// struct its "type" names, and validates it. Unknown fields are ignored and
// an unknown type is ErrUnknownType, naming it (PROTOCOL.md §4.1).
func DecodeMessage(payload []byte) (Message, error) {
	// Fast path: find the type with a plain scan and decode the payload
	// once, straight into its struct. Decoding every frame twice (into a
	// map for its type, then into the struct) was a tenth of the
	// coordinator's CPU per launch (docs/benchmarks.md). Whatever the scan
	// is unsure of, an unknown type, or a payload the struct decode
	// refuses goes the slow way below, so errors read as before.
	if typ, ok := peekType(payload); ok {
		if t, ok := registry[typ]; ok {
			msg := reflect.New(t).Interface().(Message)
			if json.Unmarshal(payload, msg) == nil {
				if v, ok := msg.(validator); ok {
					if err := v.Validate(); err != nil {
						return nil, err
					}
				}
				return msg, nil
			}
		}
	}
	return decodeSlow(payload)
}

// decodeSlow is DecodeMessage without shortcuts: it gives the precise
// error for a payload the fast path does not take.
func decodeSlow(payload []byte) (Message, error) {
	// A map, not a struct: encoding/json matches struct fields without
	// regard to case, and only the exact key "type" names the type.
	var env map[string]json.RawMessage
	if err := json.Unmarshal(payload, &env); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	rawType, ok := env["type"]
	if !ok {
		return nil, fmt.Errorf("%w: no \"type\" field", ErrMalformed)
	}
	var typ string
	if err := json.Unmarshal(rawType, &typ); err != nil {
		return nil, fmt.Errorf("%w: \"type\" is not a string: %s", ErrMalformed, rawType)
	}
	t, ok := registry[typ]
	if !ok {
		return nil, fmt.Errorf("%w %q (is the peer newer? this side speaks protocol %d)", ErrUnknownType, typ, ProtocolVersion)
	}
	msg := reflect.New(t).Interface().(Message)
	if err := json.Unmarshal(payload, msg); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, typ, err)
	}
	if v, ok := msg.(validator); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	return msg, nil
}

// peekType returns the value of the top-level "type" key of the JSON
// object in payload (the last one, as decoding into a map keeps), without
// decoding anything. ok is false whenever the answer could differ from
// what encoding/json would find: a payload that is not an object, a key
// or type with escapes in it (a key "typ\u0065" is "type"), a type that
// is not a string, or anything malformed. It does not check that the
// payload is valid JSON; the decode that follows does.
func peekType(payload []byte) (typ string, ok bool) {
	i := skipSpace(payload, 0)
	if i >= len(payload) || payload[i] != '{' {
		return "", false
	}
	i = skipSpace(payload, i+1)
	if i < len(payload) && payload[i] == '}' {
		return "", false
	}
	found := false
	for {
		// A key, with no escapes.
		if i >= len(payload) || payload[i] != '"' {
			return "", false
		}
		end, plain := scanString(payload, i)
		if end < 0 || !plain {
			return "", false
		}
		isType := string(payload[i+1:end-1]) == "type"
		i = skipSpace(payload, end)
		if i >= len(payload) || payload[i] != ':' {
			return "", false
		}
		i = skipSpace(payload, i+1)
		if isType {
			if i >= len(payload) || payload[i] != '"' {
				return "", false // not a string: the slow path says so
			}
			end, plain := scanString(payload, i)
			if end < 0 || !plain {
				return "", false
			}
			typ, found = string(payload[i+1:end-1]), true
			i = end
		} else if i = skipValue(payload, i); i < 0 {
			return "", false
		}
		i = skipSpace(payload, i)
		if i >= len(payload) {
			return "", false
		}
		switch payload[i] {
		case ',':
			i = skipSpace(payload, i+1)
		case '}':
			return typ, found
		default:
			return "", false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString returns the index just after the string that starts with the
// quote at b[i], or -1 if it does not end; plain is false when it holds an
// escape or a byte that is not printable ASCII.
func scanString(b []byte, i int) (end int, plain bool) {
	plain = true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, plain
		case c == '\\':
			plain = false
			j++ // the escaped byte cannot end the string
		case c < 0x20 || c >= 0x80:
			plain = false
		}
	}
	return -1, false
}

// skipValue returns the index just after the JSON value that starts at
// b[i] (objects and arrays by their nesting, strings by their quotes,
// anything else up to the next delimiter), or -1 if it does not end.
func skipValue(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		switch b[i] {
		case '"':
			end, _ := scanString(b, i)
			if end < 0 {
				return -1
			}
			i = end
		case '{', '[':
			depth++
			i++
		case '}', ']':
			if depth == 0 {
				return i // the end of the enclosing object
			}
			depth--
			i++
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
			i++
		default:
			i++
		}
		if depth == 0 && i > 0 && (b[i-1] == '"' || b[i-1] == '}' || b[i-1] == ']') {
			return i
		}
	}
	return -1
}

// invalid returns an ErrInvalidMessage for a message of type typ.
func invalid(typ, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidMessage, typ, fmt.Sprintf(format, args...))
}

func requireIDs(typ, buildID, containerID string) error {
	if buildID == "" {
		return invalid(typ, "empty build_id")
	}
	if containerID == "" {
		return invalid(typ, "empty container_id")
	}
	return nil
}

// Validate checks the node id and that a protocol version is stated. A
// version other than ProtocolVersion is valid here: the coordinator answers
// it with ProtocolRefusal.
func (m Hello) Validate() error {
	if m.Protocol <= 0 {
		return invalid(TypeHello, "protocol %d, want a positive version", m.Protocol)
	}
	if m.NodeID == "" {
		return invalid(TypeHello, "empty node_id")
	}
	return nil
}

// Validate checks that a code is given.
func (m Refused) Validate() error {
	if m.Code == "" {
		return invalid(TypeRefused, "empty code")
	}
	return nil
}

// Validate checks every held build.
func (m Holding) Validate() error {
	for i, h := range m.Builds {
		if err := requireIDs(TypeHolding, h.BuildID, h.ContainerID); err != nil {
			return fmt.Errorf("build %d: %w", i, err)
		}
		switch {
		case h.State == StateRunning && h.ExitCode != nil:
			return invalid(TypeHolding, "build %s is running but has an exit code", h.BuildID)
		case h.State == StateExited && h.ExitCode == nil:
			return invalid(TypeHolding, "build %s exited without an exit code", h.BuildID)
		case h.State != StateRunning && h.State != StateExited:
			return invalid(TypeHolding, "build %s has state %q, want %s or %s", h.BuildID, h.State, StateRunning, StateExited)
		}
	}
	return nil
}

// Validate checks the ids.
func (m Landed) Validate() error { return requireIDs(TypeLanded, m.BuildID, m.ContainerID) }

// Validate checks the ids, the executor reference, the spec size and the
// work directory.
func (m Launch) Validate() error {
	if err := requireIDs(TypeLaunch, m.BuildID, m.ContainerID); err != nil {
		return err
	}
	if _, err := parseDigest(m.Executor.Digest); err != nil {
		return invalid(TypeLaunch, "executor: %v", err)
	}
	if m.Executor.Size <= 0 {
		return invalid(TypeLaunch, "executor size %d, want > 0", m.Executor.Size)
	}
	if len(m.Spec) == 0 {
		return invalid(TypeLaunch, "empty spec")
	}
	if len(m.Spec) > MaxSpecSize {
		return invalid(TypeLaunch, "spec is %d bytes, max %d", len(m.Spec), MaxSpecSize)
	}
	if m.SourceSize < 0 {
		return invalid(TypeLaunch, "negative source_size %d", m.SourceSize)
	}
	if m.Workdir != "" && !path.IsAbs(m.Workdir) {
		return invalid(TypeLaunch, "workdir %q is not absolute", m.Workdir)
	}
	if m.SourceSize > 0 && m.Workdir == "" {
		return invalid(TypeLaunch, "source without a workdir")
	}
	if m.Cache != nil {
		if err := m.Cache.validate(); err != nil {
			return err
		}
	}
	return checkSecrets(m.Secrets)
}

// checkSecrets applies PROTOCOL.md §5.6's rules to a Launch's secrets:
// valid and distinct names, values of 1 to MaxSecretSize bytes without NUL
// (an environment variable cannot hold one), at most MaxSecrets of them
// and MaxSecretsTotal bytes in all.
func checkSecrets(ss []Secret) error {
	if len(ss) > MaxSecrets {
		return invalid(TypeLaunch, "%d secrets, max %d", len(ss), MaxSecrets)
	}
	seen := make(map[string]bool, len(ss))
	total := 0
	for _, s := range ss {
		if err := ValidSecretName(s.Name); err != nil {
			return invalid(TypeLaunch, "secret: %v", err)
		}
		if seen[s.Name] {
			return invalid(TypeLaunch, "secret %s given twice", s.Name)
		}
		seen[s.Name] = true
		if err := ValidSecretValue(s.Value); err != nil {
			return invalid(TypeLaunch, "secret %s: %v", s.Name, err)
		}
		total += len(s.Name) + len(s.Value)
	}
	if total > MaxSecretsTotal {
		return invalid(TypeLaunch, "secrets hold %d bytes, max %d", total, MaxSecretsTotal)
	}
	return nil
}

// Validate checks the ids and the grace period.
func (m Cancel) Validate() error {
	if err := requireIDs(TypeCancel, m.BuildID, m.ContainerID); err != nil {
		return err
	}
	if m.GraceSeconds < 0 {
		return invalid(TypeCancel, "negative grace_seconds %d", m.GraceSeconds)
	}
	return nil
}

// Validate checks the ids.
func (m Attach) Validate() error { return requireIDs(TypeAttach, m.BuildID, m.ContainerID) }

// Validate checks that sequence numbers start at 1 and offsets are not
// negative.
func (m Attached) Validate() error {
	if m.NextSeq == 0 {
		return invalid(TypeAttached, "next_seq 0, sequence numbers start at 1")
	}
	if m.StdoutOffset < 0 || m.StderrOffset < 0 {
		return invalid(TypeAttached, "negative offset (stdout %d, stderr %d)", m.StdoutOffset, m.StderrOffset)
	}
	if m.Cache != nil {
		if !m.Cache.Save || m.Cache.Size != 0 {
			return invalid(TypeAttached, "cache with save %t and size %d, want save and no size", m.Cache.Save, m.Cache.Size)
		}
		return m.Cache.validateIn(TypeAttached)
	}
	return nil
}

// Validate checks the sequence number, the stream name, the offset and the
// chunk size.
func (m Log) Validate() error {
	if m.Seq == 0 {
		return invalid(TypeLog, "seq 0, sequence numbers start at 1")
	}
	if m.Stream != StreamStdout && m.Stream != StreamStderr {
		return invalid(TypeLog, "stream %q, want %s or %s", m.Stream, StreamStdout, StreamStderr)
	}
	if m.Offset < 0 {
		return invalid(TypeLog, "negative offset %d", m.Offset)
	}
	if len(m.Data) == 0 {
		return invalid(TypeLog, "empty data")
	}
	if len(m.Data) > MaxLogChunk {
		return invalid(TypeLog, "data is %d bytes, max %d", len(m.Data), MaxLogChunk)
	}
	return nil
}

// Validate checks the ids, the work directory, the paths and the size
// bound.
func (m ArtifactsRequest) Validate() error {
	if err := requireIDs(TypeArtifactsRequest, m.BuildID, m.ContainerID); err != nil {
		return err
	}
	if !path.IsAbs(m.Workdir) {
		return invalid(TypeArtifactsRequest, "workdir %q is not absolute", m.Workdir)
	}
	if len(m.Paths) == 0 {
		return invalid(TypeArtifactsRequest, "no paths")
	}
	if len(m.Paths) > MaxArtifactPaths {
		return invalid(TypeArtifactsRequest, "%d paths, max %d", len(m.Paths), MaxArtifactPaths)
	}
	for _, p := range m.Paths {
		if p == "" {
			return invalid(TypeArtifactsRequest, "empty path")
		}
	}
	if m.MaxBytes <= 0 {
		return invalid(TypeArtifactsRequest, "max_bytes %d, want > 0", m.MaxBytes)
	}
	return nil
}

// Validate checks the size and the notes' number and length.
func (m ArtifactsHeader) Validate() error {
	if m.Size < 0 {
		return invalid(TypeArtifactsHeader, "negative size %d", m.Size)
	}
	if len(m.Notes) > MaxArtifactNotes {
		return invalid(TypeArtifactsHeader, "%d notes, max %d", len(m.Notes), MaxArtifactNotes)
	}
	for _, n := range m.Notes {
		if len(n) > MaxNoteSize {
			return invalid(TypeArtifactsHeader, "a note of %d bytes, max %d", len(n), MaxNoteSize)
		}
	}
	return nil
}

// Validate checks the version, the token, the node id and the request's
// size.
func (m Join) Validate() error {
	if m.Protocol <= 0 {
		return invalid(TypeJoin, "protocol %d, want a positive version", m.Protocol)
	}
	if m.Token == "" {
		return invalid(TypeJoin, "empty token")
	}
	if len(m.Token) > MaxTokenSize {
		return invalid(TypeJoin, "token is %d bytes, max %d", len(m.Token), MaxTokenSize)
	}
	if err := ValidNodeID(m.NodeID); err != nil {
		return invalid(TypeJoin, "%v", err)
	}
	return validDER(TypeJoin, "csr", m.CSR, MaxCSRSize)
}

// Validate checks the request's size.
func (m Renew) Validate() error { return validDER(TypeRenew, "csr", m.CSR, MaxCSRSize) }

// Validate checks the certificate's size.
func (m Issued) Validate() error {
	return validDER(TypeIssued, "certificate", m.Certificate, MaxCertSize)
}

func validDER(typ, field string, b []byte, limit int) error {
	if len(b) == 0 {
		return invalid(typ, "empty %s", field)
	}
	if len(b) > limit {
		return invalid(typ, "%s is %d bytes, max %d", field, len(b), limit)
	}
	return nil
}
