package logs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/wire"
)

// Prune deletes only old logs of builds the database says are over; a
// running build's log, a recent one and an old one of a build not over
// stay. Usage counts the files and follows the deletions.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := &Store{Dir: dir}
	defer s.Close()
	for _, id := range []string{"old", "oldrunning", "notover", "recent"} {
		if err := s.Create(id); err != nil {
			t.Fatal(err)
		}
		if err := s.Log(ctx, id, &wire.Log{Seq: 1, Stream: "stdout", Data: []byte("output of " + id + "\n")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"old", "notover", "recent"} {
		if err := s.Exit(ctx, id, &wire.Exit{LastSeq: 1}); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-100 * 24 * time.Hour)
	for _, id := range []string{"old", "oldrunning", "notover"} {
		for _, ext := range []string{".log", ".exit"} {
			if err := os.Chtimes(filepath.Join(dir, id+ext), long, long); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
	}
	before, err := s.Usage()
	if err != nil || before == 0 {
		t.Fatalf("usage %d %v", before, err)
	}
	var asked []string
	over := func(_ context.Context, id string) (bool, error) {
		asked = append(asked, id)
		return id != "notover", nil
	}
	n, err := s.Prune(ctx, time.Now().Add(-90*24*time.Hour), over)
	if err != nil || n != 1 {
		t.Fatalf("prune: %d %v, want 1 (old)", n, err)
	}
	for _, id := range []string{"old", "oldrunning", "notover"} {
		found := false
		for _, a := range asked {
			found = found || a == id
		}
		if id != "oldrunning" && !found {
			t.Errorf("%s was not asked about", id)
		}
	}
	for _, a := range asked {
		if a == "recent" {
			t.Error("a recent log was asked about")
		}
	}
	if _, err := s.Exited("old"); !errors.Is(err, coordinator.ErrUnknownBuild) {
		t.Errorf("old build's log after prune: %v, want unknown", err)
	}
	for _, id := range []string{"oldrunning", "notover", "recent"} {
		if got := logOf(t, s, id); got != "output of "+id+"\n" {
			t.Errorf("log of %s after prune: %q", id, got)
		}
	}
	after, err := s.Usage()
	if err != nil || after >= before || after == 0 {
		t.Errorf("usage %d -> %d (%v), want less but not 0", before, after, err)
	}
	// A failing question keeps the log and is reported.
	if _, err := s.Prune(ctx, time.Now().Add(time.Hour), func(context.Context, string) (bool, error) { return false, errors.New("db down") }); err == nil {
		t.Error("prune hid the database's error")
	}
	// A running build's open log is never deleted, even when asked.
	n, err = s.Prune(ctx, time.Now().Add(time.Hour), func(context.Context, string) (bool, error) { return true, nil })
	if err != nil || n != 2 {
		t.Fatalf("prune all: %d %v, want 2 (notover, recent)", n, err)
	}
	if got := logOf(t, s, "oldrunning"); got != "output of oldrunning\n" {
		t.Errorf("running build's log: %q", got)
	}
}

func TestUsageWithoutFolder(t *testing.T) {
	s := &Store{Dir: filepath.Join(t.TempDir(), "none")}
	if n, err := s.Usage(); n != 0 || err != nil {
		t.Errorf("usage of a missing folder: %d %v", n, err)
	}
	if n, err := s.Prune(context.Background(), time.Now(), nil); n != 0 || err != nil {
		t.Errorf("prune of a missing folder: %d %v", n, err)
	}
}
