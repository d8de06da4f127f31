package redact

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// maskAll is the whole stream through m in pieces cut at cuts, checking
// the hold-back bound after every piece.
func maskAll(t *testing.T, m *Masker, text string, cuts []int) string {
	t.Helper()
	longest := 0
	for _, v := range m.values {
		longest = max(longest, len(v))
	}
	var out bytes.Buffer
	prev := 0
	for _, c := range append(cuts, len(text)) {
		out.Write(m.Write([]byte(text[prev:c])))
		if m.Held() > longest-1 {
			t.Fatalf("holds %d bytes, more than the longest value (%d) less one", m.Held(), longest)
		}
		prev = c
	}
	out.Write(m.Flush())
	return out.String()
}

func TestMasker(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
		text   string
		cuts   []int
		want   string
	}{
		{"whole", []string{"s3cret"}, "a s3cret b s3cret\n", nil, "a *** b ***\n"},
		{"split in two", []string{"s3cret"}, "token=s3cret\n", []int{9}, "token=***\n"},
		{"split in many", []string{"s3cret"}, "token=s3cret\n", []int{6, 7, 8, 9, 10, 11}, "token=***\n"},
		{"ends the stream", []string{"s3cret"}, "x s3cret", []int{4}, "x ***"},
		{"prefix only", []string{"s3cret"}, "s3cre", []int{3}, "s3cre"},
		{"longest at one start", []string{"abc", "abcdef"}, "xabcdefy", []int{4}, "x***y"},
		{"shorter when the longer stops", []string{"abc", "abcdef"}, "xabcdey", []int{4}, "x***dey"},
		{"overlapping", []string{"abcd", "cdef"}, "abcdef", []int{3}, "***ef"},
		{"repeated", []string{"aa"}, "aaaaa", []int{1, 3}, "******a"},
		{"two values", []string{"one1", "two2"}, "one1two2one", []int{2, 6}, "******one"},
		{"self-overlap", []string{"abab"}, "abababab", []int{3, 5}, "******"},
		{"multi-line", []string{"line-one\nline-two"}, "got line-two only\n", []int{7}, "got *** only\n"},
		{"nothing", []string{"s3cret"}, "plain output\n", []int{5}, "plain output\n"},
	} {
		vs := make([][]byte, len(tc.values))
		for i, v := range tc.values {
			vs[i] = []byte(v)
		}
		if got := maskAll(t, NewMasker(vs), tc.text, tc.cuts); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if NewMasker(nil) != nil || NewMasker([][]byte{{}}) != nil {
		t.Error("a masker of nothing")
	}
}

// Output is held back only while it may be the start of a value: a live
// log shows the rest at once.
func TestMaskerHoldsOnlyPrefixes(t *testing.T) {
	m := NewMasker([][]byte{[]byte("s3cret-value")})
	if got := string(m.Write([]byte("waiting for input s3"))); got != "waiting for input " || m.Held() != 2 {
		t.Errorf("wrote %q, holds %d", got, m.Held())
	}
	if got := string(m.Write([]byte("x\n"))); got != "s3x\n" || m.Held() != 0 {
		t.Errorf("wrote %q, holds %d", got, m.Held())
	}
}

// However the stream is cut, the masked output is what masking it whole
// gives, no value survives it, and the hold-back stays bounded.
func TestMaskerAnyCuts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "ab\n"[rng.IntN(3)] // few letters: values overlap and repeat
		}
		return string(b)
	}
	for i := 0; i < 3000; i++ {
		var vs [][]byte
		for range 1 + rng.IntN(3) {
			vs = append(vs, []byte(word(1+rng.IntN(6))))
		}
		text := word(rng.IntN(60))
		whole := maskAll(t, NewMasker(vs), text, nil)
		var cuts []int
		for c := 0; c < len(text); c += 1 + rng.IntN(5) {
			cuts = append(cuts, c)
		}
		if got := maskAll(t, NewMasker(vs), text, cuts); got != whole {
			t.Fatalf("values %q, text %q cut at %v: %q, whole %q", vs, text, cuts, got, whole)
		}
		// No value has a '*': none can survive next to a mask either.
		for _, v := range vs {
			if strings.Contains(whole, string(v)) {
				t.Fatalf("values %q, text %q: %q still shows %q", vs, text, whole, v)
			}
		}
	}
}

// FuzzMasker: for any values and output, cut anywhere, the masker never
// panics, holds back less than the longest value, and gives what masking
// the output whole gives.
func FuzzMasker(f *testing.F) {
	f.Add([]byte("s3cret\x00other"), []byte("token=s3cret other\n"), []byte{3, 9})
	f.Add([]byte("aa\x00a"), []byte("aaaaa"), []byte{1, 1, 1})
	f.Add([]byte("line-one\nline-two"), []byte("x line-two y"), []byte{4})
	f.Fuzz(func(t *testing.T, values, text, cutsAt []byte) {
		if len(values) > 4096 || len(text) > 1<<16 {
			return
		}
		vs := bytes.Split(values, []byte{0})
		m := NewMasker(vs)
		if m == nil {
			return
		}
		whole := maskAll(t, m, string(text), nil)
		var cuts []int
		c := 0
		for _, step := range cutsAt {
			if c += int(step); c >= len(text) {
				break
			}
			cuts = append(cuts, c)
		}
		if got := maskAll(t, NewMasker(vs), string(text), cuts); got != whole {
			t.Fatalf("values %q, text %q cut at %v: %q, whole %q", vs, text, cuts, got, whole)
		}
	})
}
