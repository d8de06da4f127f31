// Package forgexec is the build step runner behind the forgexec executor.
//
// The agent copies the forgexec binary into a build container at /forgexec,
// writes the build spec (see [Spec]) at [SpecPath] and starts the container
// with /forgexec as its command. forgexec therefore runs as PID 1 inside an
// arbitrary image, possibly one without /bin/sh. It runs the spec's setup
// commands, then its commands, stopping at the first failure, forwards
// termination signals, enforces the build's timeout and reaps orphaned
// processes, as PID 1 must.
//
// A build's secrets come in a file beside the spec ([SecretsPath], which
// untrusted builds never have): [TakeSecrets] reads and removes it before
// the first command, and [Runner] gives its values to the commands as
// environment variables only.
//
// The package imports only the standard library so that the executor stays a
// small static binary.
//
// # Exit codes
//
// [Runner.Run] returns the code the executor exits with:
//
//	0        every command succeeded
//	1-123    the exit code of the first command that failed
//	2        the spec is invalid, or a command cannot be split into words
//	         (no-shell mode only)
//	124      the build's timeout expired (as GNU timeout(1) does)
//	125      forgexec itself failed (for example the work directory cannot be
//	         created)
//	126      a program was found but cannot be executed (permission denied,
//	         exec format error, a directory)
//	127      a program was not found
//	128+N    a command was killed by signal N; also the code when forgexec
//	         itself is stopped by SIGTERM (143) or SIGINT (130)
package forgexec

// Exit codes of [Runner.Run] besides a command's own code; see the package
// documentation for the full table.
const (
	ExitUsage         = 2   // invalid spec, or a command that cannot be split
	ExitTimeout       = 124 // the spec's timeout expired
	ExitInternal      = 125 // forgexec itself failed
	ExitCannotExecute = 126 // found but not executable
	ExitNotFound      = 127 // program not found
)
