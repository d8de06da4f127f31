package logs

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/forge-ci/forge/wire"
)

// Hold keeps the build's log open past its exit, for the notes Forge adds
// after it (the artifacts' lines), until release is called: followers
// (Follow) wait for those too. Release is idempotent.
func (s *Store) Hold(id string) (release func(), err error) {
	b, err := s.open(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	b.mu.Lock()
	b.holds++
	// Kept in the map while held, so that every caller sees this one
	// buildLog (an exited build's is otherwise loaded afresh each time).
	if s.builds == nil {
		s.builds = map[string]*buildLog{}
	}
	if s.builds[id] == nil {
		s.builds[id] = b
	}
	b.mu.Unlock()
	s.mu.Unlock()
	return sync.OnceFunc(func() {
		b.mu.Lock()
		b.holds--
		exited := b.exit != nil
		b.notify()
		b.mu.Unlock()
		if exited {
			s.release(id, b)
		}
	}), nil
}

// Note appends Forge's own text to the build's log (a record of its own,
// shown with the output, counted in neither stream), after its exit too:
// "forge: " starts each line. It is not bound by MaxSize: Forge writes a
// few lines, never the build.
func (s *Store) Note(id, text string) error {
	b, err := s.open(id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var rec []byte
	for i, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		line := "forge: " + l + "\n"
		if i == 0 && !b.lastNL {
			line = "\n" + line
		}
		// Records are at most a log chunk; a longer line is split.
		for len(line) > 0 {
			n := min(len(line), wire.MaxLogChunk)
			rec = appendRecord(rec, recForge, []byte(line[:n]))
			line = line[n:]
		}
	}
	f := b.f
	if f == nil {
		// Exited: its file is closed; a note is one append.
		if f, err = os.OpenFile(s.path(id, ".log"), os.O_WRONLY|os.O_APPEND, 0); err != nil {
			return fmt.Errorf("note in the log of %s: %w", id, err)
		}
		defer f.Close()
	}
	if _, err := f.Write(rec); err != nil {
		return fmt.Errorf("note in the log of %s: %w", id, err)
	}
	b.lastNL = true
	b.notify()
	return nil
}
