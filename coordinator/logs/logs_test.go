package logs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/wire"
)

func logOf(t *testing.T, s *Store, id string) string {
	t.Helper()
	var b bytes.Buffer
	if err := s.Follow(context.Background(), id, &b, false); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestStoreResume(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := &Store{Dir: dir}
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(ctx, "n", &wire.Attach{BuildID: "nope", ContainerID: "c"}); !errors.Is(err, coordinator.ErrUnknownBuild) {
		t.Fatalf("unknown build: %v", err)
	}
	at, err := s.Attach(ctx, "n", &wire.Attach{BuildID: "b1", ContainerID: "c"})
	if err != nil || at.NextSeq != 1 || at.StdoutOffset != 0 || at.Done {
		t.Fatalf("fresh attach: %+v %v", at, err)
	}
	steps := []struct {
		l       wire.Log
		wantErr bool
	}{
		{wire.Log{Seq: 1, Stream: "stdout", Offset: 0, Data: []byte("hello\n")}, false},
		{wire.Log{Seq: 2, Stream: "stderr", Offset: 0, Data: []byte("warn\n")}, false},
		{wire.Log{Seq: 3, Stream: "stdout", Offset: 0, Data: []byte("hello\n")}, false},      // a repeat: dropped
		{wire.Log{Seq: 4, Stream: "stdout", Offset: 3, Data: []byte("lo\nworld\n")}, false},  // overlaps: only "world\n" is new
		{wire.Log{Seq: 5, Stream: "stdout", Offset: 100, Data: []byte("after a gap")}, true}, // a gap
		{wire.Log{Seq: 6, Stream: "stdin", Offset: 0, Data: []byte("x")}, true},              // no such stream
	}
	for i, st := range steps {
		err := s.Log(ctx, "b1", &st.l)
		if (err != nil) != st.wantErr {
			t.Fatalf("step %d: err %v, want error %v", i, err, st.wantErr)
		}
	}
	if got := logOf(t, s, "b1"); got != "hello\nwarn\nworld\n" {
		t.Fatalf("log %q", got)
	}

	// A restart: a new store over the same folder, with a torn record at
	// the end of the file as a crash mid-write leaves it.
	s.Close()
	f, err := os.OpenFile(filepath.Join(dir, "b1.log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{recStdout, 0, 0, 0, 50, 'p', 'a'})
	f.Close()
	s = &Store{Dir: dir}
	defer s.Close()
	at, err = s.Attach(ctx, "n", &wire.Attach{BuildID: "b1", ContainerID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if at.StdoutOffset != int64(len("hello\nworld\n")) || at.StderrOffset != int64(len("warn\n")) {
		t.Fatalf("after restart: %+v", at)
	}
	if err := s.Log(ctx, "b1", &wire.Log{Seq: at.NextSeq, Stream: "stdout", Offset: at.StdoutOffset, Data: []byte("more\n")}); err != nil {
		t.Fatal(err)
	}
	if got := logOf(t, s, "b1"); got != "hello\nwarn\nworld\nmore\n" {
		t.Fatalf("log after restart %q", got)
	}
	if err := s.Exit(ctx, "b1", &wire.Exit{ExitCode: 4, LastSeq: 9}); err != nil {
		t.Fatal(err)
	}
	if err := s.Exit(ctx, "b1", &wire.Exit{ExitCode: 0, LastSeq: 10}); err != nil {
		t.Fatal(err)
	}
	if x, _ := s.Exited("b1"); x == nil || x.ExitCode != 4 {
		t.Fatalf("exit %+v, want the first one (4)", x)
	}
	if err := s.Log(ctx, "b1", &wire.Log{Seq: 11, Stream: "stdout", Offset: 17, Data: []byte("late")}); err == nil {
		t.Error("output after the exit accepted")
	}
	at, _ = s.Attach(ctx, "n", &wire.Attach{BuildID: "b1", ContainerID: "c"})
	if !at.Done {
		t.Errorf("attach after exit: %+v, want done", at)
	}
}

func TestStoreFollow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &Store{Dir: t.TempDir()}
	defer s.Close()
	if err := s.Create("b2"); err != nil {
		t.Fatal(err)
	}
	pr, pw := newPipe()
	done := make(chan error, 1)
	go func() { done <- s.Follow(ctx, "b2", pw, true) }()
	s.Log(ctx, "b2", &wire.Log{Seq: 1, Stream: "stdout", Data: []byte("one\n")})
	if got := pr.next(t); got != "one\n" {
		t.Fatalf("first %q", got)
	}
	s.Log(ctx, "b2", &wire.Log{Seq: 2, Stream: "stdout", Offset: 4, Data: []byte("two\n")})
	if got := pr.next(t); got != "two\n" {
		t.Fatalf("second %q", got)
	}
	s.Exit(ctx, "b2", &wire.Exit{ExitCode: 0, LastSeq: 2})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("follow did not end with the build")
	}
}

func TestStoreRefusesBadIDs(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	for _, id := range []string{"", "../x", "a/b", ".hidden"} {
		if err := s.Create(id); err == nil {
			t.Errorf("Create(%q) accepted", id)
		}
	}
}

// chunkPipe hands each Write to the test as one chunk.
type chunkPipe chan string

func newPipe() (chunkPipe, chunkPipe) { c := make(chunkPipe, 16); return c, c }

func (c chunkPipe) Write(p []byte) (int, error) { c <- string(p); return len(p), nil }

func (c chunkPipe) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-c:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no output")
		return ""
	}
}

// A build's file is open only while it runs: its exit closes it, and
// reading a finished build's log or attaching to it opens nothing for good.
func TestStoreKeepsOnlyRunningBuildsOpen(t *testing.T) {
	ctx := context.Background()
	s := &Store{Dir: t.TempDir()}
	defer s.Close()
	open := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.builds)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := s.Create(id); err != nil {
			t.Fatal(err)
		}
		if err := s.Log(ctx, id, &wire.Log{Seq: 1, Stream: wire.StreamStdout, Data: []byte(id + "\n")}); err != nil {
			t.Fatal(err)
		}
	}
	if n := open(); n != 3 {
		t.Fatalf("%d builds open while three run", n)
	}
	for _, id := range []string{"a", "b"} {
		if err := s.Exit(ctx, id, &wire.Exit{LastSeq: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if n := open(); n != 1 {
		t.Fatalf("%d builds open after two of three exited, want 1", n)
	}
	if got := logOf(t, s, "a"); got != "a\n" {
		t.Errorf("log of a finished build: %q", got)
	}
	att, err := s.Attach(ctx, "n", &wire.Attach{BuildID: "b", ContainerID: "c"})
	if err != nil || !att.Done {
		t.Fatalf("attach to a finished build: %+v, %v", att, err)
	}
	if x, err := s.Exited("a"); err != nil || x == nil {
		t.Fatalf("Exited(a) = %v, %v", x, err)
	}
	if err := s.Log(ctx, "a", &wire.Log{Seq: 2, Stream: wire.StreamStdout, Offset: 2, Data: []byte("late")}); err == nil {
		t.Error("output after the exit was taken")
	}
	if n := open(); n != 1 {
		t.Errorf("%d builds open after reading finished ones, want 1", n)
	}
}

// A build that prints past MaxSize: the log keeps MaxSize bytes and ends
// with one cut line; later frames are taken (no gap, no error) and their
// offsets counted, a restart resumes from the cut, and the exit is kept.
func TestStoreCutsAtMaxSize(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := &Store{Dir: dir, MaxSize: 10}
	if err := s.Create("big"); err != nil {
		t.Fatal(err)
	}
	send := func(seq uint64, stream string, off int64, data string) {
		t.Helper()
		if err := s.Log(ctx, "big", &wire.Log{Seq: seq, Stream: stream, Offset: off, Data: []byte(data)}); err != nil {
			t.Fatalf("log seq %d: %v", seq, err)
		}
	}
	send(1, "stdout", 0, "12345\n")
	send(2, "stderr", 0, "abcdef")         // straddles the cap: "abcd" is kept
	send(3, "stdout", 6, "more\n")         // past the cap: dropped
	send(4, "stderr", 6, "ghij")           // dropped
	send(5, "stdout", 6, "more\nand more") // partly a repeat, rest dropped
	want := "12345\nabcd\nforge: log cut at 10 bytes (--max-log-size); the build goes on\n"
	if got := logOf(t, s, "big"); got != want {
		t.Fatalf("log %q, want %q", got, want)
	}
	at, err := s.Attach(ctx, "n", &wire.Attach{BuildID: "big", ContainerID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if at.NextSeq != 6 || at.StdoutOffset != 19 || at.StderrOffset != 10 {
		t.Fatalf("attach after the cut: %+v, want offsets as handed in (19, 10), next seq 6", at)
	}
	if err := s.Log(ctx, "big", &wire.Log{Seq: 6, Stream: "stdout", Offset: 40, Data: []byte("x")}); err == nil {
		t.Error("a gap past the cut was taken")
	}

	// A restart: offsets fall back to the cut point; the agent's resent
	// tail is dropped, and the log still ends with one cut line.
	s.Close()
	s = &Store{Dir: dir, MaxSize: 10}
	defer s.Close()
	at, err = s.Attach(ctx, "n", &wire.Attach{BuildID: "big", ContainerID: "c"})
	if err != nil || at.StdoutOffset != 6 || at.StderrOffset != 4 {
		t.Fatalf("attach after restart: %+v %v, want the stored offsets 6, 4", at, err)
	}
	send(at.NextSeq, "stdout", 6, "more\nand more")
	send(at.NextSeq+1, "stderr", 4, "efghij")
	if err := s.Exit(ctx, "big", &wire.Exit{ExitCode: 3, LastSeq: at.NextSeq + 1}); err != nil {
		t.Fatal(err)
	}
	if x, err := s.Exited("big"); err != nil || x == nil || x.ExitCode != 3 {
		t.Fatalf("exit %+v %v, want code 3", x, err)
	}
	if got := logOf(t, s, "big"); got != want {
		t.Fatalf("log after restart %q, want %q", got, want)
	}
}

func TestCutNoteSize(t *testing.T) {
	for n, want := range map[int64]string{64 << 20: "64 MiB", 64 << 10: "64 KiB", 1 << 30: "1 GiB", 1000: "1000 bytes", 1536: "1536 bytes"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}
