package logs

import (
	"encoding/binary"
	"slices"

	"github.com/forge-ci/forge/internal/redact"
	"github.com/forge-ci/forge/wire"
)

// A build's secrets are masked before its output is stored, so neither
// the file nor anyone following the log ever sees a value (DESIGN §5).
// The lifecycle gives the values (Mask) before the build starts and takes
// them back (Forget) when it ends; each stream has a redact.Masker, which
// may hold back the start of a value at the end of a chunk until the next
// one, or the exit, says whether it is one.
//
// Forge's own lines (the secrets withheld from an untrusted build) are
// notes (Note, notes.go).
//
// Masked output changes length, and what is held back is not stored yet,
// so its records carry the stream's offset: after a restart the agent
// sends again from there, and what was held is masked again.

const (
	// recMasked is masked output: the stream's code (1 byte), the
	// stream's offset after it (8 bytes, big-endian), the text.
	recMasked byte = 5
	// maskedPrefix is recMasked's stream and offset.
	maskedPrefix = 9
	// maxMasked bounds a recMasked record: a chunk, what was held (less
	// than a value), each byte as *** at worst.
	maxMasked = maskedPrefix + 3*(wire.MaxLogChunk+wire.MaxSecretSize)
)

// validRecord tells whether a record header can be a whole record's.
func validRecord(code byte, n uint32) bool {
	switch code {
	case recStdout, recStderr, recNote, recForge:
		return n <= wire.MaxLogChunk
	case recMasked:
		return n >= maskedPrefix && n <= maxMasked
	}
	return false
}

func appendMasked(buf []byte, code byte, end int64, text []byte) []byte {
	buf = append(buf, recMasked, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(buf[len(buf)-4:], uint32(maskedPrefix+len(text)))
	buf = append(buf, code)
	buf = binary.BigEndian.AppendUint64(buf, uint64(end))
	return append(buf, text...)
}

// maskedRecord reads a recMasked record's data. A stream code that is
// not one reads as stdout's: the record was whole, so it is Forge's own.
func maskedRecord(data []byte) (code byte, end int64, text []byte) {
	code = data[0]
	if code != recStderr {
		code = recStdout
	}
	return code, int64(binary.BigEndian.Uint64(data[1:maskedPrefix])), data[maskedPrefix:]
}

// masks are the values of the builds whose output is masked, and the
// builds that ended while masked. Guarded by Store.mu.
type masks struct {
	values map[string][][]byte
	ended  map[string]bool
}

// attach gives an opened build log its maskers, or seals it.
func (m *masks) attach(id string, b *buildLog) {
	if vs := m.values[id]; vs != nil {
		for _, code := range []byte{recStdout, recStderr} {
			if b.mask[code] == nil {
				b.mask[code] = redact.NewMasker(vs)
			}
		}
	}
	if m.ended[id] {
		b.sealed = true
	}
}

// forget drops the values of a build whose exit is recorded.
func (m *masks) forget(id string) {
	delete(m.values, id)
	delete(m.ended, id)
}

// Mask has the build's output masked for values from now on; call it
// before the build starts. No values, no masking.
func (s *Store) Mask(id string, values [][]byte) {
	if !slices.ContainsFunc(values, func(v []byte) bool { return len(v) > 0 }) {
		return // what redact.NewMasker would make nil of
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.masks.values == nil {
		s.masks.values = map[string][][]byte{}
	}
	s.masks.values[id] = values
	if b := s.builds[id]; b != nil {
		b.mu.Lock()
		s.masks.attach(id, b)
		b.mu.Unlock()
	}
}

// Forget drops the values of a build that is over. When it had any, its
// log is sealed (Seal): output that still comes could no longer be
// masked.
func (s *Store) Forget(id string) {
	s.mu.Lock()
	_, masked := s.masks.values[id]
	delete(s.masks.values, id)
	s.mu.Unlock()
	if masked {
		s.Seal(id)
	}
}

// Seal refuses any more output of a build (an agent that reports late),
// and tells its agent, at its next attach, that the build is done: for a
// build whose secrets cannot be masked (any more).
func (s *Store) Seal(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.masks.ended == nil {
		s.masks.ended = map[string]bool{}
	}
	s.masks.ended[id] = true
	if b := s.builds[id]; b != nil {
		b.mu.Lock()
		b.sealed = true
		b.mu.Unlock()
	}
}

// flushMasks stores what each stream's masker held back, masked: the
// stream has ended. b.mu is held.
func (b *buildLog) flushMasks(limit int64) error {
	for _, code := range []byte{recStdout, recStderr} {
		m := b.mask[code]
		if m == nil || m.Held() == 0 || b.cut || b.sealed {
			continue
		}
		if err := b.append(limit, code, m.Flush(), b.off[code]); err != nil {
			return err
		}
	}
	return nil
}
