package logs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

// Prune deletes the logs (<id>.log and <id>.exit) of builds whose files
// were last written before olderThan and that over says have ended (in the
// database: final, and finished before olderThan). It returns how many
// builds' logs it deleted. Only old files are looked at, so a pass costs
// one directory read plus the old builds.
func (s *Store) Prune(ctx context.Context, olderThan time.Time, over func(ctx context.Context, id string) (bool, error)) (int, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("prune logs: %w", err)
	}
	var n int
	var errs []error
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok || !coordinator.ValidBuildID(id) || ctx.Err() != nil {
			continue
		}
		if !s.oldFile(s.path(id, ".log"), olderThan) || !s.oldFile(s.path(id, ".exit"), olderThan) {
			continue
		}
		ended, err := over(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("prune log of %s: %w", id, err))
			continue
		}
		if !ended {
			continue
		}
		removed, err := s.remove(id)
		if err != nil {
			errs = append(errs, err)
		}
		if removed {
			n++
		}
	}
	return n, errors.Join(append(errs, ctx.Err())...)
}

// oldFile: path was last written before t, or does not exist.
func (s *Store) oldFile(path string, t time.Time) bool {
	fi, err := os.Stat(path)
	return errors.Is(err, os.ErrNotExist) || err == nil && fi.ModTime().Before(t)
}

// remove deletes a build's log unless it is open (an agent writes to it).
// The exit goes first: a crash between leaves a log without an exit,
// which the next pass deletes.
func (s *Store) remove(id string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.builds[id] != nil {
		return false, nil
	}
	for _, ext := range []string{".exit", ".exit.tmp", ".log"} {
		if err := os.Remove(s.path(id, ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("prune log of %s: %w", id, err)
		}
	}
	s.usage = usage{} // counted again at the next read
	return true, nil
}

// usage is the last count of the logs' disk use.
type usage struct {
	at    time.Time
	bytes int64
}

// usageTTL is how long a count of the disk used is reused: a scrape every
// few seconds must not stat every log each time.
const usageTTL = 30 * time.Second

// Usage returns the bytes the logs folder's files hold, counted at most
// every 30 s.
func (s *Store) Usage() (int64, error) {
	s.usageMu.Lock()
	defer s.usageMu.Unlock()
	s.mu.Lock()
	u := s.usage
	s.mu.Unlock()
	if !u.at.IsZero() && time.Since(u.at) < usageTTL {
		return u.bytes, nil
	}
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("logs disk use: %w", err)
	}
	var total int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
	}
	s.mu.Lock()
	s.usage = usage{at: time.Now(), bytes: total}
	s.mu.Unlock()
	return total, nil
}
