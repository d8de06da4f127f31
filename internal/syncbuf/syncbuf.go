// Package syncbuf is a bytes buffer that several goroutines may write to
// and read from, for tests that collect a program's output or log while
// it runs.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is a mutex-guarded bytes.Buffer. The zero value is ready to use.
type Buffer struct {
	// Max, when above 0, bounds what is kept of a chatty writer: once Max
	// bytes are held, later writes are dropped (and reported written).
	Max int

	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Max > 0 && b.b.Len() >= b.Max {
		return len(p), nil
	}
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
