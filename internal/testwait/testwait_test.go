package testwait

import (
	"testing"
	"time"
)

func TestPauseWaits(t *testing.T) {
	start := time.Now()
	Pause(t, 30*time.Millisecond)
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("paused %v, want at least 30ms", d)
	}
}
