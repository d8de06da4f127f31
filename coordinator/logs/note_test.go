package logs

import (
	"context"
	"strings"
	"testing"

	"github.com/forge-ci/forge/wire"
)

// TestStoreNote: a note from Forge goes between the output, on a line of
// its own; it moves no agent offset (before or after a restart), does not
// count as a cut, and is refused once the exit is recorded.
func TestStoreNote(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := &Store{Dir: dir, MaxSize: 64}
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Note("b1", "cache: restored 1 MiB"); err != nil {
		t.Fatal(err)
	}
	if err := s.Log(ctx, "b1", &wire.Log{Seq: 1, Stream: "stdout", Offset: 0, Data: []byte("half a line")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Note("b1", "cache: "+strings.Repeat("x", 100)+"\n"); err != nil {
		t.Fatal(err)
	}
	if err := s.Log(ctx, "b1", &wire.Log{Seq: 2, Stream: "stdout", Offset: 11, Data: []byte(" and more\n")}); err != nil {
		t.Fatal(err)
	}
	want := "forge: cache: restored 1 MiB\nhalf a line\nforge: cache: " + strings.Repeat("x", 100) + "\n and more\n"
	if got := logOf(t, s, "b1"); got != want {
		t.Fatalf("log %q, want %q", got, want)
	}
	s.Close()

	s2 := &Store{Dir: dir, MaxSize: 64}
	at, err := s2.Attach(ctx, "n", &wire.Attach{BuildID: "b1", ContainerID: "c"})
	if err != nil || at.StdoutOffset != 21 || at.NextSeq != 1 {
		t.Fatalf("after a restart: %+v, %v (stdout offset want 21)", at, err)
	}
	// Not cut: 21 bytes of output are under MaxSize, notes aside.
	if err := s2.Log(ctx, "b1", &wire.Log{Seq: 3, Stream: "stdout", Offset: 21, Data: []byte("end\n")}); err != nil {
		t.Fatal(err)
	}
	if got := logOf(t, s2, "b1"); !strings.HasSuffix(got, " and more\nend\n") {
		t.Errorf("log after restart %q", got)
	}
	if err := s2.Exit(ctx, "b1", &wire.Exit{ExitCode: 0, LastSeq: 3}); err != nil {
		t.Fatal(err)
	}
	if err := s2.Note("b1", "too late"); err == nil {
		t.Error("a note after the exit was taken")
	}
	if err := s2.Note("nope", "x"); err == nil {
		t.Error("a note for an unknown build was taken")
	}
	s2.Close()
}
