// Package version holds the version of this build of Forge, set at link
// time by the Makefile (-X .../internal/version.Version=...).
package version

// Version is the release or git description of this build.
var Version = "dev"
