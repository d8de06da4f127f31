package redact

import (
	"bytes"
	"testing"
)

// The masker's worst case: several largest values that look like the
// output (long runs of one byte), fed in the agent's largest chunks.
func BenchmarkMaskerWorstCase(b *testing.B) {
	var vs [][]byte
	for _, last := range []byte("bcde") {
		vs = append(vs, append(bytes.Repeat([]byte{'a'}, 64<<10-1), last))
	}
	chunk := bytes.Repeat([]byte{'a'}, 32<<10)
	m := NewMasker(vs)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		m.Write(chunk)
	}
}

// A typical build: a few short secrets, ordinary output.
func BenchmarkMaskerTypical(b *testing.B) {
	m := NewMasker([][]byte{[]byte("ghp_0123456789abcdefghijklmnopqrstuvwx"), []byte("npm_TOKEN_value_1234")})
	chunk := bytes.Repeat([]byte("ok  \tgithub.com/forge-ci/forge/coordinator/logs\t1.234s\n"), 600)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		m.Write(chunk)
	}
}
