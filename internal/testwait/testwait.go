// Package testwait holds the one way tests here pause: on a timer, in a
// select on the test's context, so that every wait honours a context (a
// rule of this project) and a test that ends early never sleeps on.
package testwait

import (
	"context"
	"testing"
	"time"
)

// Pause waits d, failing the test if its context ends first.
func Pause(t testing.TB, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
		t.Fatalf("the test's context ended during a %v pause: %v", d, context.Cause(t.Context()))
	}
}
