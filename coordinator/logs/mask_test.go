package logs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/wire"
)

const secretValue = "s3cret-Value-0123"

// logger hands a build's output to a store as an agent does: numbered
// chunks with each stream's offset.
type logger struct {
	t   *testing.T
	s   *Store
	id  string
	seq uint64
	off map[string]int64
}

func newLogger(t *testing.T, s *Store, id string) *logger {
	return &logger{t: t, s: s, id: id, off: map[string]int64{}}
}

func (l *logger) send(stream, data string) {
	l.t.Helper()
	l.seq++
	if err := l.s.Log(context.Background(), l.id, &wire.Log{Seq: l.seq, Stream: stream, Offset: l.off[stream], Data: []byte(data)}); err != nil {
		l.t.Fatalf("log %q: %v", data, err)
	}
	l.off[stream] += int64(len(data))
}

func (l *logger) exit() {
	l.t.Helper()
	if err := l.s.Exit(context.Background(), l.id, &wire.Exit{ExitCode: 0, LastSeq: l.seq, FinishedAt: time.Now()}); err != nil {
		l.t.Fatal(err)
	}
}

// noValueOnDisk checks every file of the store's folder.
func noValueOnDisk(t *testing.T, dir string, values ...string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range values {
			if bytes.Contains(raw, []byte(v)) {
				t.Errorf("%s holds %q", f, v)
			}
		}
	}
}

// A value is masked in what is stored and what followers see, in either
// stream, whole or split across chunks; the start of a value at the end
// of a chunk is held only until the next one, and the exit flushes it.
func TestMaskedLog(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: dir}
	defer s.Close()
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	s.Mask("b1", [][]byte{[]byte(secretValue), []byte("other-secret")})
	var live bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Follow(ctx, "b1", &live, true); err != nil {
			t.Errorf("follow: %v", err)
		}
	}()
	l := newLogger(t, s, "b1")
	l.send(wire.StreamStdout, "token="+secretValue+"\n")
	l.send(wire.StreamStdout, "split="+secretValue[:5])
	l.send(wire.StreamStderr, "err="+secretValue[:9])
	l.send(wire.StreamStdout, secretValue[5:]+" end\n")
	l.send(wire.StreamStderr, secretValue[9:]+"\n")
	l.send(wire.StreamStdout, "last s3cr") // a value's start, then the end
	at, err := s.Attach(context.Background(), "n", &wire.Attach{BuildID: "b1", ContainerID: "c"})
	if err != nil || at.StdoutOffset != l.off[wire.StreamStdout] || at.StderrOffset != l.off[wire.StreamStderr] {
		t.Errorf("attach %+v %v: want what was handed in, %v", at, err, l.off)
	}
	l.exit()
	wg.Wait()
	// The streams interleave as they were handed in.
	want := "token=***\nsplit=err=*** end\n***\nlast s3cr"
	if got := logOf(t, s, "b1"); got != want {
		t.Errorf("stored log %q, want %q", got, want)
	}
	if live.String() != want {
		t.Errorf("streamed log %q, want %q", live.String(), want)
	}
	noValueOnDisk(t, dir, secretValue)
	s.mu.Lock()
	left := len(s.masks.values) + len(s.masks.ended)
	s.mu.Unlock()
	if left != 0 {
		t.Errorf("the store keeps %d builds' values after their exit", left)
	}
}

// After a coordinator restart, the stream's offset is what was stored:
// what the masker held is sent again, and masked again.
func TestMaskedLogResume(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: dir}
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	s.Mask("b1", [][]byte{[]byte(secretValue)})
	l := newLogger(t, s, "b1")
	l.send(wire.StreamStdout, "a="+secretValue+"\n")
	l.send(wire.StreamStdout, "b="+secretValue[:6]) // held: "s3cret"
	s.Close()

	s = &Store{Dir: dir}
	defer s.Close()
	s.Mask("b1", [][]byte{[]byte(secretValue)}) // the lifecycle's Recover does so
	at, err := s.Attach(context.Background(), "n", &wire.Attach{BuildID: "b1", ContainerID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	sent := int64(len("a=" + secretValue + "\n" + "b=" + secretValue[:6]))
	if want := sent - 6; at.StdoutOffset != want {
		t.Fatalf("offset after restart %d, want %d (without the 6 bytes held)", at.StdoutOffset, want)
	}
	// The agent resumes from there.
	l = newLogger(t, s, "b1")
	l.seq, l.off[wire.StreamStdout] = at.NextSeq-1, at.StdoutOffset
	l.send(wire.StreamStdout, secretValue+" done\n")
	l.exit()
	if got, want := logOf(t, s, "b1"), "a=***\nb=*** done\n"; got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	noValueOnDisk(t, dir, secretValue)
}

// Once the build ends with its values forgotten, late output of it is
// refused rather than stored unmasked, after a restart too.
func TestForgottenMasksRefuseOutput(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: dir}
	defer s.Close()
	for _, id := range []string{"open", "closed"} {
		if err := s.Create(id); err != nil {
			t.Fatal(err)
		}
		s.Mask(id, [][]byte{[]byte(secretValue)})
	}
	l := newLogger(t, s, "open")
	l.send(wire.StreamStdout, "x\n")
	s.Forget("open")
	s.Forget("closed")
	s.Forget("never-masked") // nothing to forget
	for _, id := range []string{"open", "closed"} {
		err := s.Log(context.Background(), id, &wire.Log{Seq: 9, Stream: wire.StreamStdout, Offset: int64(len("x\n")) * map[string]int64{"open": 1, "closed": 0}[id], Data: []byte(secretValue)})
		if err == nil || !strings.Contains(err.Error(), "no longer masked") {
			t.Errorf("%s: late output: %v", id, err)
		}
	}
	// Its agent is told the build is done.
	if at, err := s.Attach(context.Background(), "n", &wire.Attach{BuildID: "closed", ContainerID: "c"}); err != nil || !at.Done {
		t.Errorf("attach to a sealed build: %+v %v", at, err)
	}
	noValueOnDisk(t, dir, secretValue)
}

// The cut at MaxSize counts masked output.
func TestMaskedLogCut(t *testing.T) {
	s := &Store{Dir: t.TempDir(), MaxSize: 10}
	defer s.Close()
	if err := s.Create("b1"); err != nil {
		t.Fatal(err)
	}
	s.Mask("b1", [][]byte{[]byte(secretValue)})
	l := newLogger(t, s, "b1")
	l.send(wire.StreamStdout, secretValue+secretValue+secretValue+secretValue)
	l.send(wire.StreamStdout, secretValue)
	l.exit()
	if got := logOf(t, s, "b1"); !strings.HasPrefix(got, "**********\nforge: log cut") || !strings.Contains(got, "log cut at 10 bytes") || strings.Contains(got, "s3cret") {
		t.Errorf("log %q", got)
	}
}

func TestValidRecord(t *testing.T) {
	if validRecord(recMasked, maskedPrefix-1) || !validRecord(recMasked, maskedPrefix) || validRecord(recForge, wire.MaxLogChunk+1) || validRecord(9, 1) {
		t.Error("record bounds")
	}
}
