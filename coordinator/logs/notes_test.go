package logs

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/wire"
)

// TestHoldKeepsFollowersPastTheExit: a follower of a held build goes on
// after the exit, shows Forge's notes written then, and ends when the
// hold is released; the file is closed then.
func TestHoldKeepsFollowersPastTheExit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &Store{Dir: t.TempDir()}
	defer s.Close()
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	release, err := s.Hold("b1")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := newPipe()
	done := make(chan error, 1)
	go func() { done <- s.Follow(ctx, "b1", pw, true) }()
	s.Log(ctx, "b1", &wire.Log{Seq: 1, Stream: "stdout", Data: []byte("no newline")})
	if got := pr.next(t); got != "no newline" {
		t.Fatalf("output %q", got)
	}
	if err := s.Exit(ctx, "b1", &wire.Exit{LastSeq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Note("b1", "artifacts: 2 files\nartifacts: x matches nothing"); err != nil {
		t.Fatal(err)
	}
	if got := pr.next(t); got != "\nforge: artifacts: 2 files\n" {
		t.Fatalf("note %q", got)
	}
	if got := pr.next(t); got != "forge: artifacts: x matches nothing\n" {
		t.Fatalf("note %q", got)
	}
	select {
	case err := <-done:
		t.Fatalf("follow ended while held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	release() // idempotent
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("follow did not end with the release")
	}
	s.mu.Lock()
	open := len(s.builds)
	s.mu.Unlock()
	if open != 0 {
		t.Errorf("%d logs open after the exit and the release", open)
	}
	want := "no newline\nforge: artifacts: 2 files\nforge: artifacts: x matches nothing\n"
	if got := logOf(t, s, "b1"); got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	// A note after all that, and a new store over the same folder.
	if err := s.Note("b1", "late"); err != nil {
		t.Fatal(err)
	}
	s2 := &Store{Dir: s.Dir}
	defer s2.Close()
	if got := logOf(t, s2, "b1"); got != want+"forge: late\n" {
		t.Errorf("log after a restart %q", got)
	}
}

// TestNoteIsNotTheCut: a note while the build runs leaves its output
// alone, across a restart too, and long notes are split into records
// that a restart reads back whole.
func TestNoteIsNotTheCut(t *testing.T) {
	ctx := context.Background()
	s := &Store{Dir: t.TempDir(), MaxSize: 1 << 20}
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("n", 3*wire.MaxLogChunk)
	if err := s.Note("b1", long); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = &Store{Dir: s.Dir, MaxSize: 1 << 20}
	defer s.Close()
	if err := s.Log(ctx, "b1", &wire.Log{Seq: 1, Stream: "stdout", Data: []byte("output\n")}); err != nil {
		t.Fatal(err)
	}
	if got := logOf(t, s, "b1"); got != "forge: "+long+"\noutput\n" {
		t.Errorf("log of %d bytes, starts %.40q, ends %q", len(got), got, got[max(len(got)-20, 0):])
	}
}

// TestFollowShowsWhatCameAsItWasStopped: a follower told to stop still
// writes what is stored by then.
func TestFollowShowsWhatCameAsItWasStopped(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	defer s.Close()
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := newPipe()
	done := make(chan error, 1)
	go func() { done <- s.Follow(ctx, "b1", pw, true) }()
	s.Log(ctx, "b1", &wire.Log{Seq: 1, Stream: "stdout", Data: []byte("first\n")})
	if got := pr.next(t); got != "first\n" {
		t.Fatalf("output %q", got)
	}
	// Written without waking the follower: only the stop may show it.
	s.mu.Lock()
	b := s.builds["b1"]
	s.mu.Unlock()
	b.mu.Lock()
	b.f.Write(appendRecord(nil, recStdout, []byte("last\n")))
	b.mu.Unlock()
	cancel()
	if got := pr.next(t); got != "last\n" {
		t.Fatalf("output %q", got)
	}
	if err := <-done; err != context.Canceled {
		t.Errorf("follow: %v", err)
	}
}
