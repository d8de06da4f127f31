package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"reflect"
	"strings"
	"sync"
	"time"
)

// WriteFrame writes one frame (PROTOCOL.md §4.1) in a single Write, so a
// frame is not split between yamux frames needlessly. An empty payload or
// one over MaxFrameSize is refused.
func WriteFrame(w io.Writer, payload []byte) error {
	if len(payload) == 0 {
		return ErrEmptyFrame
	}
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("%w: %d bytes, max %d", ErrFrameTooLarge, len(payload), MaxFrameSize)
	}
	buf := make([]byte, FrameHeaderSize+len(payload))
	binary.BigEndian.PutUint32(buf, uint32(len(payload)))
	copy(buf[FrameHeaderSize:], payload)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("wire: write frame: %w", err)
	}
	return nil
}

// ReadFrame reads one frame (PROTOCOL.md §4.1) and returns its payload. It
// reads exactly the frame's bytes and nothing beyond, so raw bytes that
// follow a frame on the stream stay there for RecvBlob.
//
// io.EOF means the stream ended cleanly between frames; a stream that ends
// inside a frame gives io.ErrUnexpectedEOF. A length over MaxFrameSize gives
// ErrFrameTooLarge without reading or allocating the payload, a zero
// length ErrEmptyFrame. Memory grows with the bytes actually received, so
// a peer that claims 1 MiB and sends ten bytes costs little.
func ReadFrame(r io.Reader) ([]byte, error) {
	var hdr [FrameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("wire: read frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, ErrEmptyFrame
	}
	if n > MaxFrameSize {
		return nil, fmt.Errorf("%w: peer claims %d bytes, max %d", ErrFrameTooLarge, n, MaxFrameSize)
	}
	payload, err := readN(r, int(n))
	if err != nil {
		return nil, fmt.Errorf("wire: read frame of %d bytes: %w", n, err)
	}
	return payload, nil
}

// readN reads exactly n bytes, growing its buffer as they arrive (at most
// doubling, so the buffer is never more than twice what was received).
func readN(r io.Reader, n int) ([]byte, error) {
	const first = 4 << 10
	buf := make([]byte, 0, min(n, first))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*cap(buf)))
			copy(grown, buf)
			buf = grown
		}
		m, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

// Codec sends and receives messages as frames on one stream.
//
// It does not buffer: Recv consumes exactly one frame, so the raw bytes of
// a blob that follow a header frame are read from the same stream with
// RecvBlob. Send and Recv may run at the same time in two goroutines (as
// on a log stream, PROTOCOL.md §6.4); two Sends, or two Recvs, are
// serialised.
type Codec struct {
	rw     io.ReadWriter
	sendMu sync.Mutex
	recvMu sync.Mutex
}

// NewCodec returns a Codec on rw, typically a *Stream.
func NewCodec(rw io.ReadWriter) *Codec { return &Codec{rw: rw} }

// Stream returns the read-writer the Codec was made with.
func (c *Codec) Stream() io.ReadWriter { return c.rw }

// Send validates and encodes msg and writes it as one frame.
func (c *Codec) Send(msg Message) error {
	payload, err := EncodeMessage(msg)
	if err != nil {
		return err
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := WriteFrame(c.rw, payload); err != nil {
		return fmt.Errorf("send %s: %w", msg.MessageType(), err)
	}
	return nil
}

// Recv reads one frame and decodes it. The message is a pointer to one of
// the message structs (*Hello, *Launch, ...) and has been validated.
func (c *Codec) Recv() (Message, error) {
	c.recvMu.Lock()
	payload, err := ReadFrame(c.rw)
	c.recvMu.Unlock()
	if err != nil {
		return nil, err
	}
	return DecodeMessage(payload)
}

// Expect receives one message and returns it as T, which is a message
// pointer type (*Welcome) or a message struct type (Welcome). A Refused in
// its place is returned as *RefusedError; any other type as
// ErrUnexpectedMessage naming both types.
func Expect[T Message](c *Codec) (T, error) {
	var zero T
	m, err := c.Recv()
	if err != nil {
		return zero, err
	}
	if t, ok := m.(T); ok {
		return t, nil
	}
	// T is a struct type and m points to one.
	if rv := reflect.ValueOf(m); rv.Kind() == reflect.Pointer && rv.Elem().Type() == reflect.TypeFor[T]() {
		return rv.Elem().Interface().(T), nil
	}
	return zero, unexpected(typeOf[T](), m)
}

// typeOf returns the message type of T without calling a method on a nil
// pointer.
func typeOf[T Message]() string {
	t := reflect.TypeFor[T]()
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return reflect.New(t).Interface().(Message).MessageType()
}

// ExpectType receives one message and checks it has type want (a Type*
// constant), with the same errors as Expect.
func (c *Codec) ExpectType(want string) (Message, error) {
	m, err := c.Recv()
	if err != nil {
		return nil, err
	}
	if m.MessageType() != want {
		return nil, unexpected(want, m)
	}
	return m, nil
}

func unexpected(want string, got Message) error {
	if r, ok := got.(*Refused); ok {
		return &RefusedError{Want: want, Code: r.Code, Message: r.Message}
	}
	return fmt.Errorf("%w: want %s, got %s", ErrUnexpectedMessage, want, got.MessageType())
}

// RefusedError is a Refused received where another message was expected.
type RefusedError struct {
	Want    string // the message type that was expected
	Code    string // Refused.Code: one of the Refused* constants
	Message string // Refused.Message
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("want %s, got refused: %s (code %s)", e.Want, e.Message, e.Code)
}

// SendBlob writes the next blob of the conversation (size raw bytes from
// r) to the Codec's stream. See SendBlob.
func (c *Codec) SendBlob(r io.Reader, size int64) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return SendBlob(c.rw, r, size)
}

// RecvBlob copies the next size raw bytes of the Codec's stream to dst. See
// RecvBlob.
func (c *Codec) RecvBlob(dst io.Writer, size int64) error {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	return RecvBlob(c.rw, size, dst)
}

// TransferTimeout is the deadline for a request stream that carries size
// bytes of blobs (PROTOCOL.md §4.4): RequestTimeout plus one second per
// MiB, rounded up.
func TransferTimeout(size int64) time.Duration {
	if size <= 0 {
		return RequestTimeout
	}
	return RequestTimeout + time.Duration((size+(1<<20)-1)>>20)*time.Second
}

// SendBlob copies exactly size bytes from r to w: the raw bytes after a
// header frame (PROTOCOL.md §4.2). A source that ends early gives
// ErrShortBlob; bytes of r beyond size are not read.
func SendBlob(w io.Writer, r io.Reader, size int64) error {
	if size < 0 {
		return fmt.Errorf("wire: send blob: negative size %d", size)
	}
	// Large writes: yamux turns each Write into frames of up to the
	// stream window, and every frame costs a hand-off to its send loop and
	// a TLS record; 32 KiB pieces made a 20 MiB blob 640 frames, and cost
	// yamux a third of plain TLS's throughput (docs/benchmarks.md).
	bp := sendBufs.Get().(*[]byte)
	defer sendBufs.Put(bp)
	n, rerr, werr := copyBuf(w, r, size, *bp)
	switch {
	case werr != nil:
		return fmt.Errorf("wire: send blob (%d of %d bytes sent): %w", n, size, werr)
	case errors.Is(rerr, io.EOF):
		return fmt.Errorf("%w: source gave %d of %d bytes", ErrShortBlob, n, size)
	case rerr != nil:
		return fmt.Errorf("wire: send blob: read source (%d of %d bytes sent): %w", n, size, rerr)
	}
	return nil
}

// RecvBlob copies exactly size bytes from r to dst. A stream that ends
// early gives an error that is both ErrShortBlob and io.ErrUnexpectedEOF;
// errors writing dst are returned as such (not as stream errors).
func RecvBlob(r io.Reader, size int64, dst io.Writer) error {
	if size < 0 {
		return fmt.Errorf("wire: receive blob: negative size %d", size)
	}
	n, rerr, werr := copyN(dst, r, size)
	switch {
	case werr != nil:
		return fmt.Errorf("wire: receive blob: write destination (%d of %d bytes): %w", n, size, werr)
	case errors.Is(rerr, io.EOF):
		return fmt.Errorf("%w: got %d of %d bytes: %w", ErrShortBlob, n, size, io.ErrUnexpectedEOF)
	case rerr != nil:
		return fmt.Errorf("wire: receive blob (%d of %d bytes): %w", n, size, rerr)
	}
	return nil
}

// BlobReader reads the next size raw bytes of r (PROTOCOL.md §4.2) and
// then io.EOF; a stream that ends early gives an error that is both
// ErrShortBlob and io.ErrUnexpectedEOF. It is RecvBlob for a receiver that
// reads rather than being written to.
func BlobReader(r io.Reader, size int64) io.Reader { return &blobReader{r: r, left: size, size: size} }

type blobReader struct {
	r          io.Reader
	left, size int64
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		return n, nil
	case errors.Is(err, io.EOF):
		return n, fmt.Errorf("%w: got %d of %d bytes: %w", ErrShortBlob, b.size-b.left, b.size, io.ErrUnexpectedEOF)
	}
	return n, err
}

// RecvBlobVerified is RecvBlob for a blob announced by ref: it copies
// ref.Size bytes to dst and then checks their digest. On ErrDigestMismatch
// dst has received bad bytes; write to a temporary place.
func RecvBlobVerified(r io.Reader, ref BlobRef, dst io.Writer) error {
	want, err := parseDigest(ref.Digest)
	if err != nil {
		return err
	}
	h := sha256.New()
	if err := RecvBlob(r, ref.Size, io.MultiWriter(dst, h)); err != nil {
		return err
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return fmt.Errorf("%w: got sha256:%x, want %s", ErrDigestMismatch, got, ref.Digest)
	}
	return nil
}

// BlobRefOf reads r to the end and returns its size and digest.
func BlobRefOf(r io.Reader) (BlobRef, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return BlobRef{}, fmt.Errorf("wire: digest blob: %w", err)
	}
	return BlobRef{Digest: digestString(h), Size: n}, nil
}

func digestString(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// parseDigest checks "sha256:<64 lower-case hex digits>" and returns the
// raw sum.
func parseDigest(d string) ([]byte, error) {
	hexSum, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexSum) != 2*sha256.Size || strings.ToLower(hexSum) != hexSum {
		return nil, fmt.Errorf("%w: digest %q is not sha256:<64 lower-case hex digits>", ErrInvalidMessage, d)
	}
	sum, err := hex.DecodeString(hexSum)
	if err != nil {
		return nil, fmt.Errorf("%w: digest %q: %v", ErrInvalidMessage, d, err)
	}
	return sum, nil
}

// sendBufs holds SendBlob's copy buffers, one server stream window each.
var sendBufs = sync.Pool{New: func() any { b := make([]byte, DefaultMaxStreamWindow); return &b }}

// copyN copies exactly n bytes from src to dst. rerr is io.EOF when src
// ended early; read and write errors are told apart so each side can say
// whose fault it was.
func copyN(dst io.Writer, src io.Reader, n int64) (done int64, rerr, werr error) {
	return copyBuf(dst, src, n, make([]byte, min(n, 32<<10)))
}

// copyBuf copies exactly n bytes through buf, telling read errors from
// write errors.
func copyBuf(dst io.Writer, src io.Reader, n int64, buf []byte) (done int64, rerr, werr error) {
	for done < n {
		m, err := src.Read(buf[:min(int64(len(buf)), n-done)])
		if m > 0 {
			w, err := dst.Write(buf[:m])
			done += int64(w)
			if err == nil && w != m {
				err = io.ErrShortWrite
			}
			if err != nil {
				return done, nil, err
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) && done == n {
				return done, nil, nil
			}
			return done, err, nil
		}
	}
	return done, nil, nil
}
