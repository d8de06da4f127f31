//go:build !linux

package forgexec

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// Runner runs a build spec. forgexec runs inside Linux containers only; on
// other systems this stub keeps the module building and Run refuses.
type Runner struct {
	Stdout, Stderr io.Writer
	Shell          string
	NoShell        bool
	KillGrace      time.Duration
	Secrets        map[string]string
}

// Run prints that only Linux is supported and returns ExitInternal (125).
func (r *Runner) Run(ctx context.Context, spec *Spec) int {
	w := r.Stderr
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintln(w, "forgexec: only Linux is supported")
	return ExitInternal
}
