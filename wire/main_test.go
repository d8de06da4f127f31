package wire

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run when goroutines started by the tests (or by the
// sessions they made) outlive them: every goroutine must have an owner that
// stops it.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 && !fuzzing() {
		// A timer for the deadline and a ticker to poll: every wait has a deadline.
		deadline := time.NewTimer(5 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
	settle:
		for runtime.NumGoroutine() > before {
			select {
			case <-deadline.C:
				break settle
			case <-tick.C:
			}
		}
		tick.Stop()
		deadline.Stop()
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			fmt.Fprintf(os.Stderr, "%d goroutines outlived the tests (%d before):\n%s\n", n, before, buf)
			code = 1
		}
	}
	os.Exit(code)
}

func fuzzing() bool {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.fuzz") {
			return true
		}
	}
	return false
}
