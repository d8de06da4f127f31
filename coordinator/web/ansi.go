package web

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Build output is data (DESIGN §5): a log line becomes runs of plain text,
// each with the CSS classes of its SGR colours, and nothing else. Every
// other escape sequence (cursor moves, screen clears, titles, links) is
// dropped; so are control characters but the tab. static/ansi.js is the
// same parser for the live page: keep the two alike.

// maxLineRunes is how much of one line a page shows; the rest is counted.
const maxLineRunes = 32 << 10

// segment is a run of a line's text in one style; Class is "" for none.
type segment struct {
	Text, Class string
}

// sgr is the style that SGR escape codes set: the 16 colours (-1 for the
// default), bold, dim, italic and underline.
type sgr struct {
	fg, bg                       int8
	bold, dim, italic, underline bool
}

var plainStyle = sgr{fg: -1, bg: -1}

func (s sgr) class() string {
	var c []string
	if s.fg >= 0 {
		c = append(c, "ansi-f"+strconv.Itoa(int(s.fg)))
	}
	if s.bg >= 0 {
		c = append(c, "ansi-b"+strconv.Itoa(int(s.bg)))
	}
	for _, f := range []struct {
		on   bool
		name string
	}{{s.bold, "ansi-bold"}, {s.dim, "ansi-dim"}, {s.italic, "ansi-italic"}, {s.underline, "ansi-underline"}} {
		if f.on {
			c = append(c, f.name)
		}
	}
	return strings.Join(c, " ")
}

// encode writes s for the page's script (ForgeANSI.style):
// "fg;bg;bold;dim;italic;underline".
func (s sgr) encode() string {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	return fmt.Sprintf("%d;%d;%d;%d;%d;%d", s.fg, s.bg, b(s.bold), b(s.dim), b(s.italic), b(s.underline))
}

// apply changes s by the parameters of one SGR sequence ("1;31", "" is 0).
func (s sgr) apply(params string) sgr {
	ps := strings.FieldsFunc(params, func(r rune) bool { return r == ';' || r == ':' })
	if len(ps) == 0 {
		ps = []string{"0"}
	}
	for i := 0; i < len(ps); i++ {
		n, err := strconv.Atoi(ps[i])
		if err != nil {
			continue
		}
		switch {
		case n == 0:
			s = plainStyle
		case n == 1:
			s.bold = true
		case n == 2:
			s.dim = true
		case n == 3:
			s.italic = true
		case n == 4:
			s.underline = true
		case n == 22:
			s.bold, s.dim = false, false
		case n == 23:
			s.italic = false
		case n == 24:
			s.underline = false
		case n >= 30 && n <= 37:
			s.fg = int8(n - 30)
		case n == 39:
			s.fg = -1
		case n >= 40 && n <= 47:
			s.bg = int8(n - 40)
		case n == 49:
			s.bg = -1
		case n >= 90 && n <= 97:
			s.fg = int8(n - 90 + 8)
		case n >= 100 && n <= 107:
			s.bg = int8(n - 100 + 8)
		case n == 38 || n == 48:
			// 38;5;N (256 colours: the first 16 are kept) or 38;2;R;G;B
			// (dropped: a class per colour is not worth it).
			c, used := int8(-2), 0
			if i+2 < len(ps) && ps[i+1] == "5" {
				if v, err := strconv.Atoi(ps[i+2]); err == nil && v >= 0 && v < 16 {
					c = int8(v)
				}
				used = 2
			} else if i+1 < len(ps) && ps[i+1] == "2" {
				used = 4
			}
			if c >= 0 && n == 38 {
				s.fg = c
			} else if c >= 0 {
				s.bg = c
			}
			i += used
		}
	}
	return s
}

// renderLine parses one line of output (without its newline) in the style
// st it starts with, and returns its runs, the style it ends with, and how
// many characters past maxLineRunes it dropped. A carriage return inside
// the line starts it again, as on a terminal that redraws a progress bar.
func renderLine(line []byte, st sgr) (segs []segment, end sgr, cut int) {
	var (
		cur   strings.Builder
		runes int
	)
	flush := func() {
		if cur.Len() > 0 {
			segs = append(segs, segment{Text: cur.String(), Class: st.class()})
			cur.Reset()
		}
	}
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == 0x1b:
			i = escape(line, i, func(params string) { flush(); st = st.apply(params) })
			continue
		case c == '\r':
			j := i
			for j < len(line) && line[j] == '\r' {
				j++
			}
			if j < len(line) {
				// More follows: what came before is overwritten.
				cur.Reset()
				segs, runes, cut = segs[:0], 0, 0
			}
			i = j
			continue
		case c == '\t':
		case c < 0x20 || c == 0x7f:
			i++
			continue
		}
		r, size := utf8.DecodeRune(line[i:])
		i += size
		if r >= 0x80 && r <= 0x9f {
			continue // C1 controls
		}
		if runes >= maxLineRunes {
			cut++
			continue
		}
		runes++
		cur.WriteRune(r) // an invalid byte is written as U+FFFD
	}
	flush()
	return segs, st, cut
}

// escape skips the escape sequence at line[i] (an ESC) and returns the
// index after it, calling sgr with the parameters of an SGR sequence. An
// unfinished sequence runs to the end of the line.
func escape(line []byte, i int, sgr func(params string)) int {
	i++
	if i >= len(line) {
		return i
	}
	switch c := line[i]; {
	case c == '[': // CSI: parameters 0x30-0x3f, intermediates 0x20-0x2f, a final 0x40-0x7e
		j := i + 1
		for j < len(line) && line[j] >= 0x30 && line[j] <= 0x3f {
			j++
		}
		params := string(line[i+1 : j])
		for j < len(line) && line[j] >= 0x20 && line[j] <= 0x2f {
			j++
		}
		if j >= len(line) {
			return j
		}
		if f := line[j]; f >= 0x40 && f <= 0x7e {
			if f == 'm' && j == i+1+len(params) {
				sgr(params)
			}
			return j + 1
		}
		return j // not a sequence: the byte is shown (or dropped) on its own
	case c == ']' || c == 'P' || c == '_' || c == '^': // OSC, DCS, APC, PM: up to BEL or ESC \
		for j := i + 1; j < len(line); j++ {
			if line[j] == 0x07 {
				return j + 1
			}
			if line[j] == 0x1b && j+1 < len(line) && line[j+1] == '\\' {
				return j + 2
			}
		}
		return len(line)
	case c >= 0x20 && c <= 0x2f: // ESC ( B and the like
		j := i
		for j < len(line) && line[j] >= 0x20 && line[j] <= 0x2f {
			j++
		}
		return min(j+1, len(line))
	}
	return i + 1 // ESC 7, ESC c, ...
}
