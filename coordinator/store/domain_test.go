package store

import "github.com/forge-ci/forge/coordinator"

// The domain's names, as these tests used them before the build record
// moved to the coordinator package.
type (
	Build = coordinator.Build
	State = coordinator.State
)

const (
	Queued  = coordinator.Queued
	Running = coordinator.Running
	Success = coordinator.Success
	Failure = coordinator.Failure
	Error   = coordinator.Error
)

var States = coordinator.States
