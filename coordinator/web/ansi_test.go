package web

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// ansiCase is one line of testdata/ansi.json: a line of output (in, or
// hex for bytes that are not UTF-8) and the runs a page shows of it,
// [text, class]. The browser test (internal/e2e) gives the same cases to
// static/ansi.js, so the server's and the live page's parsers agree.
type ansiCase struct {
	Name string      `json:"name"`
	In   string      `json:"in"`
	Hex  string      `json:"hex"`
	Want [][2]string `json:"want"`
}

func TestRenderLine(t *testing.T) {
	raw, err := os.ReadFile("testdata/ansi.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []ansiCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		in := []byte(c.In)
		if c.Hex != "" {
			if in, err = hex.DecodeString(c.Hex); err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
		}
		segs, _, cut := renderLine(in, plainStyle)
		got := [][2]string{}
		for _, s := range segs {
			got = append(got, [2]string{s.Text, s.Class})
		}
		if !reflect.DeepEqual(got, c.Want) && !(len(got) == 0 && len(c.Want) == 0) || cut != 0 {
			t.Errorf("%s: renderLine(%q)\n got %q (cut %d)\nwant %q", c.Name, in, got, cut, c.Want)
		}
	}
}

func TestRenderLineStyleCarries(t *testing.T) {
	_, st, _ := renderLine([]byte("\x1b[1;33mwarning: "), plainStyle)
	segs, st, _ := renderLine([]byte("still yellow\x1b[0m"), st)
	if want := []segment{{"still yellow", "ansi-f3 ansi-bold"}}; !reflect.DeepEqual(segs, want) {
		t.Errorf("second line: %q, want %q", segs, want)
	}
	if st != plainStyle {
		t.Errorf("after a reset: %+v", st)
	}
	if got := (sgr{fg: 3, bg: -1, bold: true}).encode(); got != "3;-1;1;0;0;0" {
		t.Errorf("encode: %q", got)
	}
}

func TestRenderLineLong(t *testing.T) {
	// A 10,000-character line is shown whole; one past maxLineRunes is cut.
	line := strings.Repeat("x", 10000)
	segs, _, cut := renderLine([]byte(line), plainStyle)
	if len(segs) != 1 || segs[0].Text != line || cut != 0 {
		t.Errorf("10,000 characters: %d runs, cut %d", len(segs), cut)
	}
	segs, _, cut = renderLine([]byte(strings.Repeat("é", maxLineRunes+5)), plainStyle)
	if n := utf8.RuneCountInString(segs[0].Text); n != maxLineRunes || cut != 5 {
		t.Errorf("over the bound: %d characters kept, %d cut", n, cut)
	}
	// Many redraws cost no more than the line's length.
	segs, _, _ = renderLine([]byte(strings.Repeat("\rspin", 100000)+"\rdone"), plainStyle)
	if len(segs) != 1 || segs[0].Text != "done" {
		t.Errorf("redraws: %q", segs)
	}
}

// FuzzRenderLine: whatever a build prints, the runs are valid UTF-8 with
// no escape or control character but the tab, within the bound.
func FuzzRenderLine(f *testing.F) {
	for _, s := range []string{"\x1b[1;31mx\x1b[0m", "\x1b]8;;u\x1b\\l", "a\rb\r\n", "\xff\xfe", "\x1b[38;5;", "\x1b[38;2;1;2;3m\x1b(0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		segs, st, _ := renderLine(line, plainStyle)
		runes := 0
		for _, s := range segs {
			if s.Text == "" || !utf8.ValidString(s.Text) {
				t.Fatalf("run %q", s.Text)
			}
			for _, r := range s.Text {
				if r < 0x20 && r != '\t' || r == 0x7f || r >= 0x80 && r <= 0x9f {
					t.Fatalf("control %U in %q", r, s.Text)
				}
				runes++
			}
			if s.Class != "" && strings.Trim(s.Class, "abcdefghijklmnopqrstuvwxyz0123456789- ") != "" {
				t.Fatalf("class %q", s.Class)
			}
		}
		if runes > maxLineRunes {
			t.Fatalf("%d characters", runes)
		}
		if st.fg < -1 || st.fg > 15 || st.bg < -1 || st.bg > 15 {
			t.Fatalf("style %+v", st)
		}
	})
}
