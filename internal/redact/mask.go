package redact

import "bytes"

// Masked replaces each value a Masker hides (GitHub Actions and Drone
// write the same).
const Masked = "***"

// minLine is the shortest line of a multi-line value that is also masked
// on its own: a key printed a line at a time is hidden too, and short
// lines ("}") do not mask half the log.
const minLine = 8

// Masker replaces known values (a build's secrets) with Masked in a
// stream of bytes that arrives in pieces: a value split across two
// pieces is masked too. It holds back at most the longest value's length
// minus one byte, and only while the end of what it has could be the
// start of a value; Flush gives the rest at the end of the stream. Not
// safe for concurrent use.
type Masker struct {
	values [][]byte // distinct, non-empty
	prefix [][]int  // KMP prefix function of each value
	held   []byte
}

// NewMasker masks values (and each line of at least minLine bytes of a
// multi-line value); empty values are ignored. nil when there is nothing
// to mask.
func NewMasker(values [][]byte) *Masker {
	seen := map[string]bool{}
	m := &Masker{}
	add := func(v []byte) {
		if len(v) == 0 || seen[string(v)] {
			return
		}
		seen[string(v)] = true
		m.values = append(m.values, bytes.Clone(v))
	}
	for _, v := range values {
		add(v)
		if bytes.IndexByte(v, '\n') >= 0 {
			for _, line := range bytes.Split(v, []byte("\n")) {
				if line = bytes.TrimSuffix(line, []byte("\r")); len(line) >= minLine {
					add(line)
				}
			}
		}
	}
	if len(m.values) == 0 {
		return nil
	}
	for _, v := range m.values {
		m.prefix = append(m.prefix, prefixFunction(v))
	}
	return m
}

// prefixFunction is KMP's: p[i] is the length of the longest proper
// prefix of v[:i+1] that is also its suffix.
func prefixFunction(v []byte) []int {
	p := make([]int, len(v))
	for i, k := 1, 0; i < len(v); i++ {
		for k > 0 && v[i] != v[k] {
			k = p[k-1]
		}
		if v[i] == v[k] {
			k++
		}
		p[i] = k
	}
	return p
}

// Write takes the next piece of the stream and returns what can be shown
// of it now, masked.
func (m *Masker) Write(p []byte) []byte {
	buf := p // nothing held, mostly: no copy of the chunk
	if len(m.held) > 0 {
		buf = append(m.held, p...)
	}
	out, rest := m.mask(buf, false)
	m.held = append([]byte(nil), rest...)
	return out
}

// Held is how many bytes Write holds back, at most the longest value's
// length minus one.
func (m *Masker) Held() int { return len(m.held) }

// Flush ends the stream: what was held, masked.
func (m *Masker) Flush() []byte {
	out, _ := m.mask(m.held, true)
	m.held = nil
	return out
}

// mask masks buf, the earliest match first and the longest of those
// starting together. Unless final, it stops at the first place from
// which the rest of buf could be the start of a value, and returns that
// rest to hold.
func (m *Masker) mask(buf []byte, final bool) (out, rest []byte) {
	var partial []int // each value's longest prefix that ends buf (0: none)
	if !final {
		partial = m.partials(buf)
	}
	next := make([]int, len(m.values)) // each value's next match at or after the last search, -1 none
	for i := range next {
		next[i] = -2 // not searched yet
	}
	pos := 0
	for {
		hold := len(buf)
		for i, q := range partial {
			// A shorter prefix of the same value ends buf where the
			// value's prefix function says: walked only as pos passes.
			for q > 0 && len(buf)-q < pos {
				q = m.prefix[i][q-1]
			}
			partial[i] = q
			if q > 0 {
				hold = min(hold, len(buf)-q)
			}
		}
		best, bestLen := -1, 0
		for i, v := range m.values {
			if next[i] == -2 || next[i] >= 0 && next[i] < pos {
				if j := bytes.Index(buf[pos:], v); j >= 0 {
					next[i] = pos + j
				} else {
					next[i] = -1
				}
			}
			if s := next[i]; s >= 0 && s < hold && (best < 0 || s < best || s == best && len(v) > bestLen) {
				best, bestLen = s, len(v)
			}
		}
		if best < 0 {
			return append(out, buf[pos:hold]...), buf[hold:]
		}
		out = append(append(out, buf[pos:best]...), Masked...)
		pos = best + bestLen
	}
}

// partials gives, for each value, the length of the longest suffix of buf
// that is a proper prefix of it: the value may go on in the next piece.
// Each value's KMP automaton reads only the last len(value)-1 bytes.
func (m *Masker) partials(buf []byte) []int {
	out := make([]int, len(m.values))
	for vi, v := range m.values {
		p, q := m.prefix[vi], 0
		for _, c := range buf[max(0, len(buf)-(len(v)-1)):] {
			for q > 0 && c != v[q] {
				q = p[q-1]
			}
			if c == v[q] {
				q++ // stays under len(v): the window is shorter than v
			}
		}
		out[vi] = q
	}
	return out
}
