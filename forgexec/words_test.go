package forgexec

import (
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// splitCases are SplitWords inputs with their words. sh marks inputs whose
// meaning a real shell gives the same words for (no expansions, globs,
// operators or comments), used by TestSplitWordsMatchesShell.
var splitCases = []struct {
	in   string
	want []string
	sh   bool
}{
	{`a b c`, []string{"a", "b", "c"}, true},
	{"  a \t b\n", []string{"a", "b"}, true},
	{`'a b' c`, []string{"a b", "c"}, true},
	{`"a b" c`, []string{"a b", "c"}, true},
	{`a'b c'd`, []string{"ab cd"}, true},
	{`a'b c'"d"`, []string{"ab cd"}, true},
	{`''`, []string{""}, true},
	{`""`, []string{""}, true},
	{`x '' y`, []string{"x", "", "y"}, true},
	{`x "" ''`, []string{"x", "", ""}, true},
	{`a""b`, []string{"ab"}, true},
	{`'a"b'`, []string{`a"b`}, true},
	{`"a'b"`, []string{"a'b"}, true},
	{`"a\"b"`, []string{`a"b`}, true},
	{`"a\\b"`, []string{`a\b`}, true},
	{`"a\b\n"`, []string{`a\b\n`}, true}, // other backslashes stay in double quotes
	{`"\$HOME"`, []string{"$HOME"}, true},
	{"\"a\\`b\"", []string{"a`b"}, true},
	{`a\ b`, []string{"a b"}, true},
	{`\'`, []string{"'"}, true},
	{`\"`, []string{`"`}, true},
	{`\\`, []string{`\`}, true},
	{`a\b`, []string{"ab"}, true},
	{`'\'`, []string{`\`}, true},
	{`'\\n'`, []string{`\\n`}, true},
	{"a\\\nb", []string{"ab"}, true},       // line continuation inside a word
	{"a \\\n b", []string{"a", "b"}, true}, // line continuation between words
	{"\"a\\\nb\"", []string{"ab"}, true},   // continuation inside double quotes
	{"'a\\\nb'", []string{"a\\\nb"}, true}, // nothing special in single quotes
	{"'a\nb' \"c\nd\"", []string{"a\nb", "c\nd"}, true},
	{`printf "%s|" 'a b' c`, []string{"printf", "%s|", "a b", "c"}, true},
	{`--flag=1 -x`, []string{"--flag=1", "-x"}, true},
	{"héllo 'wörld'", []string{"héllo", "wörld"}, true},
	{`a\	b`, []string{"a\tb"}, true},

	// Not shell-compatible by design: these stay literal.
	{`$HOME`, []string{"$HOME"}, false},
	{`"$HOME/x"`, []string{"$HOME/x"}, false},
	{`${X:-y}`, []string{"${X:-y}"}, false},
	{`a|b`, []string{"a|b"}, false},
	{`a && b; c > d`, []string{"a", "&&", "b;", "c", ">", "d"}, false},
	{`~/x *.go [ab]?`, []string{"~/x", "*.go", "[ab]?"}, false},
	{"echo $(date) `date`", []string{"echo", "$(date)", "`date`"}, false},
	{`# not a comment`, []string{"#", "not", "a", "comment"}, false},
	{`FOO=bar cmd`, []string{"FOO=bar", "cmd"}, false},
}

func TestSplitWords(t *testing.T) {
	for _, tc := range splitCases {
		got, err := SplitWords(tc.in)
		if err != nil {
			t.Errorf("SplitWords(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitWords(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSplitWordsErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`'abc`, "unterminated single quote"},
		{`a 'b`, "unterminated single quote"},
		{`"abc`, "unterminated double quote"},
		{`"abc\"`, "unterminated double quote"},
		{`"a" "`, "unterminated double quote"},
		{`abc\`, "trailing backslash"},
		{`\`, "trailing backslash"},
		{``, "empty command"},
		{"  \t\n ", "empty command"},
		{"\\\n", "empty command"},
	} {
		got, err := SplitWords(tc.in)
		if err == nil {
			t.Errorf("SplitWords(%q) = %q, want error %q", tc.in, got, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SplitWords(%q) error %q, want %q", tc.in, err, tc.want)
		}
	}
}

// TestSplitWordsMatchesShell proves the splitter against the host's
// /bin/sh: printf prints each word the shell made between markers, which
// must be the words SplitWords made.
func TestSplitWordsMatchesShell(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh on this host")
	}
	n := 0
	for _, tc := range splitCases {
		if !tc.sh {
			continue
		}
		n++
		out, err := exec.Command("/bin/sh", "-c", "printf '<%s>' "+tc.in).Output()
		if err != nil {
			t.Errorf("sh with %q: %v", tc.in, err)
			continue
		}
		var want strings.Builder
		for _, w := range tc.want {
			want.WriteString("<" + w + ">")
		}
		if string(out) != want.String() {
			t.Errorf("input %q: sh gives %q, SplitWords gives %q", tc.in, out, want.String())
		}
	}
	// The shell must refuse unterminated quotes as well.
	for _, in := range []string{`'abc`, `"abc`, `"abc\"`} {
		if err := exec.Command("/bin/sh", "-c", "printf '<%s>' "+in).Run(); err == nil {
			t.Errorf("sh accepted %q", in)
		}
	}
	t.Logf("%d inputs cross-checked against /bin/sh", n)
}

// quoteWord quotes w for a POSIX shell (and for SplitWords).
func quoteWord(w string) string {
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

func FuzzSplitWords(f *testing.F) {
	for _, tc := range splitCases {
		f.Add(tc.in)
	}
	for _, in := range []string{`'abc`, `"a\`, `\`, "", "\\\n", `"\\\""'\''`} {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		words, err := SplitWords(in)
		if err != nil {
			return
		}
		if len(words) == 0 {
			t.Fatalf("SplitWords(%q) succeeded with no words", in)
		}
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = quoteWord(w)
		}
		again, err := SplitWords(strings.Join(quoted, " "))
		if err != nil {
			t.Fatalf("re-quoted %q: %v", words, err)
		}
		if !reflect.DeepEqual(again, words) {
			t.Fatalf("SplitWords(%q) = %q, re-quoted and split again = %q", in, words, again)
		}
	})
}
