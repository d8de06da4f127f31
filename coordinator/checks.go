package coordinator

import "time"

// CheckRun is a GitHub check run Forge created for a build (DESIGN §3,
// "Reports to GitHub"). A build has one at a time; one that awaited
// approval (completed, action_required) is followed by a new one when it
// runs.
type CheckRun struct {
	ID          int64 // GitHub's id
	BuildID     string
	Owner, Repo string
	Status      string // the last sent: queued, in_progress or completed
	Created     time.Time
}
