package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				b.Write([]byte("x"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("x", 800) {
		t.Fatalf("%d bytes, want 800", len(got))
	}
}

func TestMax(t *testing.T) {
	b := Buffer{Max: 4}
	for _, s := range []string{"ab", "cd", "ef"} {
		if n, err := b.Write([]byte(s)); n != 2 || err != nil {
			t.Fatalf("Write(%q) = %d, %v; want 2, nil", s, n, err)
		}
	}
	if got := b.String(); got != "abcd" {
		t.Errorf("kept %q, want abcd", got)
	}
}
