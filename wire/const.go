// Package wire is the protocol between the Forge coordinator and its
// agents, specified in PROTOCOL.md: the small PKI behind `forge certs`
// (pki.go), the TLS 1.3 configurations that check certificate roles
// (tls.go), the yamux session set-up with its write-timeout and keep-alive
// policy (session.go), the Session and Stream types that carry that policy
// (mux.go), length-prefixed JSON framing with raw blobs after header frames
// (frame.go), and the messages (messages.go). Constants and errors are all
// in const.go. Package wiretest has a PKI and session pairs for tests.
//
// The agent dials the coordinator and is the yamux client; both sides open
// streams, one conversation per stream. A typical request, coordinator side:
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

// ProtocolVersion is the version of the message protocol described in
// PROTOCOL.md. The agent states it in Hello; a coordinator that speaks
// another version answers Refused{Code: RefusedProtocol}. It changes when a
// message changes meaning or a required field is added; new optional fields
// do not change it (decoders ignore fields they do not know).
const ProtocolVersion = 1

// Framing and size limits.
const (
	// FrameHeaderSize is the size of the big-endian length that precedes
	// every frame.
	FrameHeaderSize = 4

	// MaxFrameSize is the largest frame payload (the JSON object, not
	// counting the length prefix). Larger frames are refused when written
	// and when read; on read the claimed size is never allocated.
	MaxFrameSize = 1 << 20

	// MaxLogChunk is the most bytes of container output one Log frame
	// carries. Base64 in JSON makes that about 44 KiB on the wire, well
	// under MaxFrameSize.
	MaxLogChunk = 32 << 10

	// MaxSpecSize is the largest build spec (the build.json contents) a
	// Launch carries.
	MaxSpecSize = 256 << 10
)

// Labels the coordinator puts on a build's service and container, and the
// agent checks before it touches a container (PROTOCOL.md §6.2).
const (
	LabelBuild = "forge.build" // the build id
	LabelRepo  = "forge.repo"  // owner/repo
)

// Message types: the value of the "type" field of every frame.
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
)

// Codes of a Refused message.
const (
	// RefusedProtocol: the peers speak different protocol versions. The
	// message names both versions.
	RefusedProtocol = "protocol"
	// RefusedIdentity: the coordinator could not bind the agent to the node
	// it claims (unknown node, not ready, connection from another address).
	RefusedIdentity = "identity"
	// RefusedBusy: the peer cannot take the request now; it may be retried.
	RefusedBusy = "busy"
	// RefusedNotFound: the build or container named does not exist (here).
	RefusedNotFound = "not_found"
	// RefusedBadRequest: the request is malformed or out of order.
	RefusedBadRequest = "bad_request"
	// RefusedForbidden: the request is well formed but not allowed (wrong
	// forge.build label, container already ran, not a forge container).
	RefusedForbidden = "forbidden"
	// RefusedInternal: the peer failed (Docker error, disk full, ...).
	RefusedInternal = "internal"
)

// Output streams named in Log.Stream.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// States of a held build (Held.State).
const (
	StateRunning = "running"
	StateExited  = "exited"
)

// Roles, carried in certificates as URI SANs (see RoleURIPrefix).
const (
	RoleCoordinator Role = "coordinator"
	RoleAgent       Role = "agent"
)

// RoleURIPrefix is the prefix of the URI SAN that states a certificate's
// role: spiffe://forge/coordinator or spiffe://forge/agent.
const RoleURIPrefix = "spiffe://forge/"

// PKI defaults.
const (
	// DefaultCAValidity is how long a CA made by NewCA is valid when no
	// validity is given.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultLeafValidity is how long an issued certificate is valid when
	// IssueRequest.ValidFor is zero.
	DefaultLeafValidity = 365 * 24 * time.Hour
	// ClockSkew is how far NotBefore is back-dated by default, so that a
	// certificate issued on one machine is valid at once on a machine whose
	// clock is a little behind.
	ClockSkew = 5 * time.Minute
)

// Session defaults (SessionConfig fields left zero take these).
const (
	// DefaultKeepAliveInterval: how often each side pings. A peer that
	// stops answering is detected within KeepAliveInterval + WriteTimeout.
	DefaultKeepAliveInterval = 10 * time.Second
	// DefaultWriteTimeout bounds every write of the session: a write to
	// the connection that makes no progress for this long, or a stream
	// write that cannot be handed to the connection within it, closes the
	// whole session.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultStreamOpenTimeout: a stream the peer does not accept within
	// this time closes the session (the peer is wedged).
	DefaultStreamOpenTimeout = 30 * time.Second
	// DefaultStreamCloseTimeout: a half-closed stream whose peer never
	// closes its side is reset after this time.
	DefaultStreamCloseTimeout = 2 * time.Minute
	// DefaultMaxStreamWindow is the per-stream receive window. yamux's own
	// default (256 KiB) caps one stream at 256 KiB per round trip; the
	// executor (a few MiB) and source archives (up to hundreds of MiB) go
	// over single streams, so a larger window keeps them from being bound
	// by latency. It is also the largest yamux data frame a stream sends.
	DefaultMaxStreamWindow = 1 << 20
	// DefaultAcceptBacklog: streams opened by the peer and not yet
	// accepted. Must be the same on both sides.
	DefaultAcceptBacklog = 256
	// DefaultHandshakeTimeout bounds the TLS handshake done by Client and
	// Server.
	DefaultHandshakeTimeout = 10 * time.Second
	// HelloTimeout bounds the hello → welcome → holding exchange, on both
	// sides (PROTOCOL.md §6.1).
	HelloTimeout = 15 * time.Second
	// LaunchTimeout is the deadline both sides put on a launch stream,
	// the transfer of the executor and the source included.
	LaunchTimeout = 5 * time.Minute
	// RequestTimeout is the deadline a side puts on a request stream for
	// the exchange of frames (Hello→Welcome, Launch→LaunchReady,
	// Cancel→Cancelled plus the grace period, ...). Bulk transfers extend
	// it by their size at a conservative rate; see PROTOCOL.md.
	RequestTimeout = 30 * time.Second
)

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
)
