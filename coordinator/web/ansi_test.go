package web

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRenderLine(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     []segment
	}{
		{"plain", "hello <b>&amp;</b>", []segment{{"hello <b>&amp;</b>", ""}}},
		{"colour and reset", "\x1b[31mred\x1b[0m plain", []segment{{"red", "ansi-f1"}, {" plain", ""}}},
		{"bold bright", "\x1b[1;92mok\x1b[22m!", []segment{{"ok", "ansi-f10 ansi-bold"}, {"!", "ansi-f10"}}},
		{"background and default", "\x1b[44;37mx\x1b[39my\x1b[49mz", []segment{{"x", "ansi-f7 ansi-b4"}, {"y", "ansi-b4"}, {"z", ""}}},
		{"empty SGR resets", "\x1b[3;4mi\x1b[mn", []segment{{"i", "ansi-italic ansi-underline"}, {"n", ""}}},
		{"256 colours", "\x1b[38;5;9ma\x1b[38;5;200mb\x1b[48;5;2mc", []segment{{"a", "ansi-f9"}, {"b", "ansi-f9"}, {"c", "ansi-f9 ansi-b2"}}},
		{"truecolor dropped, what follows kept", "\x1b[38;2;255;0;0;1mx", []segment{{"x", "ansi-bold"}}},
		{"colon sub-parameters", "\x1b[38:5:3mx", []segment{{"x", "ansi-f3"}}},
		{"cursor moves dropped", "a\x1b[2Kb\x1b[1A\x1b[10;20Hc\x1b[?25ld", []segment{{"abcd", ""}}},
		{"title dropped", "\x1b]0;evil title\x07text", []segment{{"text", ""}}},
		{"hyperlink: the text stays, the link goes", "\x1b]8;;javascript:alert(1)\x1b\\click\x1b]8;;\x1b\\", []segment{{"click", ""}}},
		{"charset and keypad", "\x1b(Ba\x1b=b\x1b7c", []segment{{"abc", ""}}},
		{"carriage return redraws", "10%\r50%\r100%", []segment{{"100%", ""}}},
		{"carriage return keeps the style", "\x1b[32m10%\r\x1b[1m100%", []segment{{"100%", "ansi-f2 ansi-bold"}}},
		{"CRLF", "done\r", []segment{{"done", ""}}},
		{"erase after return: blank, as on a terminal", "progress\r\x1b[K", nil},
		{"controls dropped, tab kept", "a\x00b\x07c\x08d\te\x7ff", []segment{{"abcd\tef", ""}}},
		{"C1 controls dropped", "a\u009bb\u0085c", []segment{{"abc", ""}}},
		{"invalid UTF-8", "ok \xff\xfe bad \xc3", []segment{{"ok \ufffd\ufffd bad \ufffd", ""}}},
		{"unfinished CSI", "a\x1b[31", []segment{{"a", ""}}},
		{"unfinished OSC", "a\x1b]0;title", []segment{{"a", ""}}},
		{"lone ESC", "a\x1b", []segment{{"a", ""}}},
		{"CSI with a bad byte", "a\x1b[31\x01b", []segment{{"ab", ""}}},
	} {
		got, _, cut := renderLine([]byte(c.in), plainStyle)
		if !reflect.DeepEqual(got, c.want) || cut != 0 {
			t.Errorf("%s: renderLine(%q)\n got %q (cut %d)\nwant %q", c.name, c.in, got, cut, c.want)
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
