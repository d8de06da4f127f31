// Package logs keeps each build's output in a file, and its exit beside
// it: what an agent needs to resume a log without losing or repeating
// output, and what the API and the pages read.
package logs

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/internal/redact"
	"github.com/forge-ci/forge/wire"
)

// Store keeps each build's output in a file under Dir; the agent hub
// writes to it, the API reads it.
//
// The file is a sequence of records: one byte naming the stream (1 stdout,
// 2 stderr), a 4-byte big-endian length, the bytes. From it alone the
// store recovers, after a restart, how much of each stream it has, which is
// what an agent needs to resume without losing or repeating output. A
// record cut short by a crash is dropped when the file is opened again.
// The exit is kept beside it in <id>.exit, written once. A build's file
// is open only while the build runs: from its first use until its exit.
//
// Output masked for a build's secrets (code 5, which also carries its
// stream and that stream's offset) is described in mask.go.
//
// With MaxSize set, a build's output past MaxSize bytes (stdout and stderr
// together) is cut: the store appends one note record (code 3) saying so
// and drops the rest. It goes on taking the agent's frames and counts
// their offsets as if it had stored them, so the live stream never sees a
// gap and the exit is still recorded. After a restart the offsets are those
// of the file (the cut point): an agent that resumes sends the tail again,
// which is dropped the same way.
type Store struct {
	Dir string
	// MaxSize bounds each build's stored output in bytes; 0 is no bound.
	MaxSize int64

	mu     sync.Mutex
	builds map[string]*buildLog
	usage  usage // guarded by mu
	masks  masks // guarded by mu

	usageMu sync.Mutex // one count of the disk used at a time
}

type buildLog struct {
	mu      sync.Mutex
	f       *os.File
	nextSeq uint64
	off     [3]int64 // by stream code: what the agent has handed in
	stored  int64    // output bytes in the file, both streams
	cut     bool     // the note is written: further output is dropped
	lastNL  bool     // the last stored byte is a newline (or none stored)
	exit    *wire.Exit
	holds   int           // Hold calls not released: the log is not over at the exit
	changed chan struct{} // closed and replaced on every append, exit or release
	// mask hides the build's secrets in each stream (by code) before it
	// is stored; nil for a build without secrets (mask.go).
	mask [3]*redact.Masker
	// sealed: the build ended while its secrets were masked; no more of
	// its output is stored, as it could no longer be masked.
	sealed bool
}

const (
	recStdout byte = 1
	recStderr byte = 2
	// recNote is text from Forge itself (the cut line): shown with the
	// output, counted in neither stream's offsets.
	recNote byte = 3
	// recForge is a note of Forge's that is not the cut (Note): shown the
	// same way, and it leaves the output's cap alone.
	recForge  byte = 4
	recHeader      = 5
)

func streamCode(s string) (byte, error) {
	switch s {
	case wire.StreamStdout:
		return recStdout, nil
	case wire.StreamStderr:
		return recStderr, nil
	}
	return 0, fmt.Errorf("unknown stream %q", s)
}

func (s *Store) path(id, ext string) string { return filepath.Join(s.Dir, id+ext) }

// Create makes the (empty) log of a new build; agents can attach to it
// from then on.
func (s *Store) Create(id string) error {
	if !coordinator.ValidBuildID(id) {
		return fmt.Errorf("build id %q: not a valid id", id)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(s.path(id, ".log"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create log of %s: %w", id, err)
	}
	return f.Close()
}

// open returns the build's log, loading it from disk on first use.
func (s *Store) open(id string) (*buildLog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.builds[id]; b != nil {
		return b, nil
	}
	if !coordinator.ValidBuildID(id) {
		return nil, fmt.Errorf("%w %q", coordinator.ErrUnknownBuild, id)
	}
	f, err := os.OpenFile(s.path(id, ".log"), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s", coordinator.ErrUnknownBuild, id)
	}
	if err != nil {
		return nil, err
	}
	b := &buildLog{f: f, changed: make(chan struct{}), lastNL: true}
	good, err := scanRecords(f, func(code byte, data []byte) {
		switch code {
		case recNote:
			b.cut = true
			return
		case recForge:
			b.lastNL = true
			return
		case recMasked:
			// The stream's offset is the record's: masking changed
			// the length, and held back what is sent again.
			var end int64
			code, end, data = maskedRecord(data)
			b.off[code] = end
		default:
			b.off[code] += int64(len(data))
		}
		b.stored += int64(len(data))
		if len(data) > 0 {
			b.lastNL = data[len(data)-1] == '\n'
		}
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read log of %s: %w", id, err)
	}
	// Drop a record cut short by a crash, then append after the good ones.
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	if raw, err := os.ReadFile(s.path(id, ".exit")); err == nil {
		var e wire.Exit
		if err := json.Unmarshal(raw, &e); err != nil {
			f.Close()
			return nil, fmt.Errorf("exit of %s: %w", id, err)
		}
		b.exit = &e
		b.nextSeq = e.LastSeq + 1
	}
	if b.exit != nil {
		// Over: read, never written again, so not kept open.
		f.Close()
		b.f = nil
		return b, nil
	}
	if s.builds == nil {
		s.builds = map[string]*buildLog{}
	}
	s.masks.attach(id, b)
	s.builds[id] = b
	return b, nil
}

// release closes a build's file once its exit is recorded, unless a Hold
// keeps it open for notes.
func (s *Store) release(id string, b *buildLog) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.holds > 0 {
		return nil
	}
	if s.builds[id] == b {
		delete(s.builds, id)
	}
	if b.f == nil {
		return nil
	}
	err := b.f.Close()
	b.f = nil
	return err
}

// scanRecords calls fn for each whole record of r and returns the length
// of the whole records.
func scanRecords(r io.Reader, fn func(code byte, data []byte)) (int64, error) {
	br := bufio.NewReader(r)
	var good int64
	var hdr [recHeader]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return good, nil
			}
			return good, err
		}
		code, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
		if !validRecord(code, n) {
			return good, nil // garbage from a torn write: the rest is dropped
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(br, data); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return good, nil
			}
			return good, err
		}
		fn(code, data)
		good += recHeader + int64(n)
	}
}

// Attach says what is stored of the build: the agent resumes from there.
func (s *Store) Attach(ctx context.Context, nodeID string, a *wire.Attach) (*wire.Attached, error) {
	b, err := s.open(a.BuildID)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return &wire.Attached{NextSeq: max(b.nextSeq, 1), StdoutOffset: b.off[recStdout], StderrOffset: b.off[recStderr], Done: b.exit != nil || b.sealed}, nil
}

// Log stores one chunk. Output the store has already (an agent that
// resumes from an older point, or a second stream of the same build) is
// dropped by its offset; output beyond what the store has is a gap and an
// error, so nothing is ever stored out of order.
func (s *Store) Log(ctx context.Context, id string, l *wire.Log) error {
	code, err := streamCode(l.Stream)
	if err != nil {
		return err
	}
	b, err := s.open(id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exit != nil {
		return fmt.Errorf("build %s has exited; no more output is taken", id)
	}
	if b.sealed {
		return fmt.Errorf("build %s has ended; its output is no longer taken, as its secrets are no longer masked", id)
	}
	have := b.off[code]
	data := l.Data
	switch end := l.Offset + int64(len(data)); {
	case l.Offset > have:
		return fmt.Errorf("%s offset %d, but the store has %d bytes: output is missing", l.Stream, l.Offset, have)
	case end <= have:
		b.nextSeq = max(b.nextSeq, l.Seq+1)
		return nil
	default:
		data = data[have-l.Offset:]
	}
	if b.cut {
		// Past the cap: taken and counted, not stored.
		b.off[code] += int64(len(data))
		b.nextSeq = max(b.nextSeq, l.Seq+1)
		return nil
	}
	text, end := data, int64(-1)
	if m := b.mask[code]; m != nil {
		// Masked before it is stored (and so before anyone reads it);
		// the offset stored with it leaves out what the masker holds.
		text = m.Write(data)
		end = b.off[code] + int64(len(data)) - int64(m.Held())
	}
	if err := b.append(s.MaxSize, code, text, end); err != nil {
		return fmt.Errorf("append log of %s: %w", id, err)
	}
	b.off[code] += int64(len(data))
	b.nextSeq = max(b.nextSeq, l.Seq+1)
	b.notify()
	return nil
}

// append stores text of stream code, cut at limit bytes of output (0: no
// bound). end >= 0 stores it as masked output after which the stream's
// offset is end. b.mu is held.
func (b *buildLog) append(limit int64, code byte, text []byte, end int64) error {
	keep, cut := text, false
	if limit > 0 && b.stored+int64(len(text)) > limit {
		keep, cut = text[:max(limit-b.stored, 0)], true
	}
	var recs []byte
	switch {
	case len(keep) == 0:
	case end >= 0:
		recs = appendMasked(recs, code, end, keep)
	default:
		recs = appendRecord(recs, code, keep)
	}
	if cut {
		note := cutNote(limit)
		if len(keep) > 0 && keep[len(keep)-1] != '\n' || len(keep) == 0 && !b.lastNL {
			note = "\n" + note
		}
		recs = appendRecord(recs, recNote, []byte(note))
	}
	if len(recs) == 0 {
		return nil
	}
	// One write: a crash leaves at most a torn tail, dropped at open.
	if _, err := b.f.Write(recs); err != nil {
		return err
	}
	b.stored += int64(len(keep))
	if len(keep) > 0 {
		b.lastNL = keep[len(keep)-1] == '\n'
	}
	b.cut = cut
	return nil
}

func appendRecord(buf []byte, code byte, data []byte) []byte {
	buf = append(buf, code, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(buf[len(buf)-4:], uint32(len(data)))
	return append(buf, data...)
}

// cutNote is the line that ends a log cut at max bytes.
func cutNote(max int64) string {
	return fmt.Sprintf("forge: log cut at %s (--max-log-size); the build goes on\n", sizeText(max))
}

// sizeText writes n bytes in the largest binary unit that divides it.
func sizeText(n int64) string {
	for _, u := range []struct {
		unit string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.unit)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// Exit records the build's exit, once: later ones are ignored. The
// build's file is closed then.
func (s *Store) Exit(ctx context.Context, id string, e *wire.Exit) error {
	b, err := s.open(id)
	if err != nil {
		return err
	}
	if err := b.recordExit(s.path(id, ".exit"), s.MaxSize, e); err != nil {
		return err
	}
	s.mu.Lock()
	s.masks.forget(id)
	s.mu.Unlock()
	return s.release(id, b)
}

func (b *buildLog) recordExit(path string, limit int64, e *wire.Exit) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exit != nil {
		return nil
	}
	// The end of the output: what the maskers held back, masked.
	if err := b.flushMasks(limit); err != nil {
		return err
	}
	if err := b.f.Sync(); err != nil {
		return err
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".tmp", raw, 0o644); err != nil {
		return err
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return err
	}
	ex := *e
	b.exit = &ex
	b.notify()
	return nil
}

// notify wakes followers; b.mu is held.
func (b *buildLog) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// Exited returns the build's recorded exit, or nil while it runs.
func (s *Store) Exited(id string) (*wire.Exit, error) {
	if !coordinator.ValidBuildID(id) {
		return nil, fmt.Errorf("%w %q", coordinator.ErrUnknownBuild, id)
	}
	raw, err := os.ReadFile(s.path(id, ".exit"))
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(s.path(id, ".log")); err != nil {
			return nil, fmt.Errorf("%w %s", coordinator.ErrUnknownBuild, id)
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var e wire.Exit
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("exit of %s: %w", id, err)
	}
	return &e, nil
}

// Follow writes the build's output to w as plain text, stdout and stderr
// in the order they were stored, and when follow is set goes on until the
// build's exit is recorded or ctx ends.
func (s *Store) Follow(ctx context.Context, id string, w io.Writer, follow bool) error {
	b, err := s.open(id)
	if err != nil {
		return err
	}
	f, err := os.Open(s.path(id, ".log"))
	if err != nil {
		return err
	}
	defer f.Close()
	var pos int64
	for done := false; ; {
		b.mu.Lock()
		changed, over := b.changed, b.exit != nil && b.holds == 0
		b.mu.Unlock()
		// Read the whole records written so far.
		var werr error
		n, err := scanRecords(io.NewSectionReader(f, pos, 1<<62), func(code byte, data []byte) {
			if code == recMasked {
				_, _, data = maskedRecord(data)
			}
			if werr == nil {
				_, werr = w.Write(data)
			}
		})
		if err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
		pos += n
		if fl, ok := w.(interface{ Flush() }); ok && n > 0 {
			fl.Flush()
		}
		if !follow || over {
			return nil
		}
		if done {
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			// Once more: what was written as the follower was told to
			// stop (the build's last notes) is still shown.
			done = true
		case <-changed:
		}
	}
}

// Close closes the files of the builds still running.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for id, b := range s.builds {
		if b.f != nil { // nil: exited, kept for a Hold
			errs = append(errs, b.f.Close())
		}
		delete(s.builds, id)
	}
	return errors.Join(errs...)
}
