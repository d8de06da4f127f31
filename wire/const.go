// Package wire is the protocol between the Forge coordinator and its
// agents, specified in PROTOCOL.md: the small PKI behind `forge certs`
// (pki.go), the TLS 1.3 configurations that check certificate roles
// (tls.go), the yamux session set-up with its write-timeout and keep-alive
// policy (session.go), the Session and Stream types that carry that policy
// (mux.go), length-prefixed JSON framing with raw blobs after header frames
// (frame.go), and the messages (messages.go). Constants and errors are all
// in const.go. Package wiretest has a PKI and session pairs for tests.
//
// One conversation per stream (PROTOCOL.md §6). A typical request,
// coordinator side:
//
//	st, err := session.Open(ctx) // the stream ends with ctx at the latest
//	if err != nil {
//		return err // the session is closed already
//	}
//	defer st.Close()
//	st.SetDeadline(time.Now().Add(wire.RequestTimeout + 10*time.Second)) // + grace
//	c := wire.NewCodec(st)
//	if err := c.Send(&wire.Cancel{BuildID: id, ContainerID: cid, GraceSeconds: 10}); err != nil {
//		return err
//	}
//	done, err := wire.Expect[*wire.Cancelled](c) // a Refused comes back as *wire.RefusedError
//
// wire imports nothing else of this module.
package wire

import (
	"errors"
	"time"
)

// ProtocolVersion is the version of PROTOCOL.md this package speaks,
// carried by Hello and Welcome (PROTOCOL.md §8).
const ProtocolVersion = 1

// Framing and size limits (PROTOCOL.md §4.1, §10).
const (
	// FrameHeaderSize is the size of the big-endian length that precedes
	// every frame.
	FrameHeaderSize = 4

	// MaxFrameSize is the largest frame payload (the JSON object, not
	// counting the length prefix).
	MaxFrameSize = 1 << 20

	// MaxLogChunk is the most bytes of container output one Log frame
	// carries. Base64 in JSON makes that about 44 KiB on the wire, well
	// under MaxFrameSize.
	MaxLogChunk = 32 << 10

	// MaxSpecSize is the largest build spec (the build.json contents) a
	// Launch carries.
	MaxSpecSize = 256 << 10

	// MaxArtifactPaths is the most paths an ArtifactsRequest names.
	MaxArtifactPaths = 256
	// MaxArtifactNotes is the most notes an ArtifactsHeader carries, and
	// MaxNoteSize the longest: a hundred lines say enough of what was
	// skipped, and the frame stays far under MaxFrameSize.
	MaxArtifactNotes = 100
	MaxNoteSize      = 1 << 10

	// MaxSecretSize is the largest value of one secret (a repository
	// secret given to a build's commands).
	MaxSecretSize = 64 << 10
	// MaxSecretName is the longest secret name.
	MaxSecretName = 128
	// MaxSecrets and MaxSecretsTotal (names and values) bound the secrets
	// of one Launch: base64 in JSON, with the largest spec, it stays
	// under MaxFrameSize.
	MaxSecrets      = 100
	MaxSecretsTotal = 512 << 10
)

// Labels the coordinator puts on a build's service and container, and the
// agent checks before it touches a container (PROTOCOL.md §6.2).
const (
	LabelBuild = "forge.build" // the build id
	LabelRepo  = "forge.repo"  // owner/repo
)

// Message types: the value of the "type" field of every frame
// (PROTOCOL.md §5).
const (
	TypeHello            = "hello"
	TypeWelcome          = "welcome"
	TypeRefused          = "refused"
	TypeHolding          = "holding"
	TypeLanded           = "landed"
	TypeLaunch           = "launch"
	TypeLaunchReady      = "launch_ready"
	TypeStarted          = "started"
	TypeCancel           = "cancel"
	TypeCancelled        = "cancelled"
	TypeAttach           = "attach"
	TypeAttached         = "attached"
	TypeLog              = "log"
	TypeLogAck           = "log_ack"
	TypeExit             = "exit"
	TypeExitAck          = "exit_ack"
	TypeArtifactsRequest = "artifacts_request"
	TypeArtifactsHeader  = "artifacts_header"
	TypeJoin             = "join"
	TypeRenew            = "renew"
	TypeIssued           = "issued"
	TypeCacheSave        = "cache_save"
	TypeCacheReady       = "cache_ready"
	TypeCacheSaved       = "cache_saved"
)

// Codes of a Refused message; what each means is in PROTOCOL.md §5.3.
const (
	RefusedProtocol   = "protocol"    // the protocol versions differ
	RefusedIdentity   = "identity"    // the node id cannot be bound to the session
	RefusedBusy       = "busy"        // not now; may be retried
	RefusedNotFound   = "not_found"   // no such build or container (here)
	RefusedBadRequest = "bad_request" // malformed, rule-breaking or out of order
	RefusedForbidden  = "forbidden"   // well formed but not allowed
	RefusedInternal   = "internal"    // the sender failed
)

// Output streams named in Log.Stream (PROTOCOL.md §5.13).
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// States of a held build (Held.State, PROTOCOL.md §5.4).
const (
	StateRunning = "running"
	StateExited  = "exited"
)

// Roles, carried in certificates as URI SANs (PROTOCOL.md §2).
const (
	RoleCoordinator Role = "coordinator"
	RoleAgent       Role = "agent"
)

// RoleURIPrefix is the prefix of the URI SAN that states a certificate's
// role: spiffe://forge/coordinator, or spiffe://forge/agent/<node-id> for
// the agent of one swarm node (PROTOCOL.md §2).
const RoleURIPrefix = "spiffe://forge/"

// Limits of the identity messages (PROTOCOL.md §5.19-§5.21).
const (
	MaxCSRSize   = 16 << 10 // a PKCS#10 request, DER
	MaxCertSize  = 16 << 10 // an issued certificate, DER
	MaxTokenSize = 256      // a join token
	MaxNodeID    = 64       // a swarm node id (25 characters today)
)

// PKI defaults.
const (
	// DefaultCAValidity is how long a CA made by NewCA is valid when no
	// validity is given.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultLeafValidity is how long an issued certificate is valid when
	// IssueRequest.ValidFor is zero: 90 days, as swarm's own node
	// certificates.
	DefaultLeafValidity = 90 * 24 * time.Hour
	// DefaultAgentCertTTL is how long a certificate the coordinator signs
	// for a joining or renewing agent is valid.
	DefaultAgentCertTTL = 24 * time.Hour
	// RenewAt is the part of its lifetime after which an agent asks for a
	// new certificate (PROTOCOL.md §6.7).
	RenewAt = 2.0 / 3
	// ClockSkew is how far NotBefore is back-dated by default, so that a
	// certificate issued on one machine is valid at once on a machine whose
	// clock is a little behind.
	ClockSkew = 5 * time.Minute
)

// Session parameters (PROTOCOL.md §3; what each is for is said there).
// SessionConfig fields left zero take these.
const (
	DefaultKeepAliveInterval  = 10 * time.Second
	DefaultWriteTimeout       = 10 * time.Second // no progress for this long closes the session
	DefaultStreamOpenTimeout  = 30 * time.Second
	DefaultStreamCloseTimeout = 2 * time.Minute
	// DefaultMaxStreamWindow is the per-stream receive window of the
	// coordinator (the yamux server): an agent's stream can make it buffer
	// this much. SendBlob writes in buffers of this size.
	DefaultMaxStreamWindow = 1 << 20
	// DefaultClientStreamWindow is the agent's (the yamux client's): its
	// bulk bytes (sources, caches) come from the coordinator, and yamux
	// reads a whole frame before its reader sees any, so a small window
	// stalls the sender. 1 MiB: cache.restore_ratio 0.67–0.73; 16 MiB:
	// 0.80–0.83 (docs/benchmarks.md, Cache restore).
	DefaultClientStreamWindow = 16 << 20
	DefaultAcceptBacklog      = 256
	DefaultHandshakeTimeout   = 10 * time.Second // the TLS handshake (PROTOCOL.md §2)
)

// Stream deadlines (PROTOCOL.md §4.4, §6.1).
const (
	HelloTimeout   = 15 * time.Second // hello → welcome → holding, both sides
	LaunchTimeout  = 5 * time.Minute  // a whole launch stream, transfers included
	RequestTimeout = 30 * time.Second // a request stream's exchange of frames
)

// ArtifactsScanAllowance is how many bytes beyond max_bytes an agent may
// read out of a container while it looks for an artifact request's
// matches (PROTOCOL.md §6.5): what a glob does not match is read and
// skipped, and that costs local socket bandwidth, so it is bounded.
const ArtifactsScanAllowance = 1 << 30

// ArtifactsTimeout is the deadline of a whole artifacts stream whose
// request has maxBytes (PROTOCOL.md §4.4, §6.5): the agent reads up to
// maxBytes plus ArtifactsScanAllowance out of the container, then sends up
// to maxBytes, each at TransferTimeout's rate.
func ArtifactsTimeout(maxBytes int64) time.Duration {
	return TransferTimeout(maxBytes+ArtifactsScanAllowance) + TransferTimeout(maxBytes)
}

// writeChunk is how much one Write on the underlying connection may carry
// under one write deadline; see timeoutConn.
const writeChunk = 64 << 10

// Errors. Wrapped errors keep these as their cause, so classify with
// errors.Is. Role errors are *RoleError and refusals from the peer are
// *RefusedError; use errors.As for those.
var (
	// ErrFrameTooLarge: a frame's length exceeds MaxFrameSize.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrEmptyFrame: a frame's length is zero.
	ErrEmptyFrame = errors.New("wire: empty frame")
	// ErrMalformed: a frame is not a JSON object with a string "type".
	ErrMalformed = errors.New("wire: malformed message")
	// ErrUnknownType: the frame's type is not one this version knows
	// (typically a newer peer).
	ErrUnknownType = errors.New("wire: unknown message type")
	// ErrUnexpectedMessage: a valid message arrived where another type was
	// expected (a Refused gives *RefusedError instead).
	ErrUnexpectedMessage = errors.New("wire: unexpected message")
	// ErrInvalidMessage: a message breaks a rule of its type (size limit,
	// unknown enum value, missing id). Checked when sending and receiving.
	ErrInvalidMessage = errors.New("wire: invalid message")
	// ErrShortBlob: raw bytes after a header ended before the stated size.
	ErrShortBlob = errors.New("wire: blob shorter than its stated size")
	// ErrDigestMismatch: a blob's bytes do not match the digest announced.
	ErrDigestMismatch = errors.New("wire: blob digest mismatch")
	// ErrWriteTimeout: a write on the session did not complete within the
	// write timeout; the whole session has been closed.
	ErrWriteTimeout = errors.New("wire: write timeout, session closed")
	// ErrSessionClosed: a stream could not be opened or accepted because
	// the session has ended (or had to be closed by that failure).
	ErrSessionClosed = errors.New("wire: session closed")
	// ErrNoRole: a certificate carries no spiffe://forge/ role URI, or more
	// than one.
	ErrNoRole = errors.New("wire: certificate has no forge role")
	// ErrNoPeerCertificate: the TLS peer presented no certificate.
	ErrNoPeerCertificate = errors.New("wire: peer presented no certificate")
	// ErrNoNode: an agent certificate names no node (spiffe://forge/agent
	// without /<node-id>, as made before per-node identity).
	ErrNoNode = errors.New("wire: agent certificate names no node")
	// ErrBadCSR: a certificate request breaks PROTOCOL.md §2's rules
	// (signature, key type, names).
	ErrBadCSR = errors.New("wire: certificate request refused")
)
