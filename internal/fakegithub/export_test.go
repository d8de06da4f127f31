package fakegithub

import "time"

// SetClock makes the fake read the time from now, so a test can let
// codes expire.
func (f *Server) SetClock(now func() time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = now
}
