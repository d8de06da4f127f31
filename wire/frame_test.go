package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

func frame(payload string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	return append(b, payload...)
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	for _, p := range []string{"x", `{"type":"exit_ack"}`, strings.Repeat("a", MaxFrameSize)} {
		if err := WriteFrame(&buf, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []int{1, 19, MaxFrameSize} {
		got, err := ReadFrame(iotest.OneByteReader(&buf)) // also: reads split anywhere
		if err != nil || len(got) != want {
			t.Fatalf("got %d bytes, %v; want %d", len(got), err, want)
		}
	}
	if _, err := ReadFrame(&buf); err != io.EOF {
		t.Errorf("at end: got %v, want io.EOF", err)
	}
}

func TestFrameErrors(t *testing.T) {
	tooBig := binary.BigEndian.AppendUint32(nil, MaxFrameSize+1)
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty stream", nil, io.EOF},
		{"short header", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"zero length", []byte{0, 0, 0, 0, '{'}, ErrEmptyFrame},
		{"too large", append(tooBig, make([]byte, 64)...), ErrFrameTooLarge},
		{"4 GiB", []byte{0xff, 0xff, 0xff, 0xff}, ErrFrameTooLarge},
		{"truncated payload", frame("hello")[:7], io.ErrUnexpectedEOF},
		{"header only", frame("hello")[:4], io.ErrUnexpectedEOF},
		{"large truncated payload", append(binary.BigEndian.AppendUint32(nil, 100_000), make([]byte, 70_000)...), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		_, err := ReadFrame(bytes.NewReader(tt.input))
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := WriteFrame(io.Discard, nil); !errors.Is(err, ErrEmptyFrame) {
		t.Errorf("write empty: %v", err)
	}
	if err := WriteFrame(io.Discard, make([]byte, MaxFrameSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("write too large: %v", err)
	}
}

// countingReader serves a 4 GiB frame header and then endless zeros,
// counting what is read past the header.
type countingReader struct {
	header []byte
	extra  int
}

func (r *countingReader) Read(p []byte) (int, error) {
	if len(r.header) > 0 {
		n := copy(p, r.header)
		r.header = r.header[n:]
		return n, nil
	}
	r.extra += len(p)
	clear(p)
	return len(p), nil
}

func TestFrameClaiming4GiBIsNotAllocated(t *testing.T) {
	const runs = 100
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		r := &countingReader{header: []byte{0xff, 0xff, 0xff, 0xff}}
		if _, err := ReadFrame(r); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("got %v, want ErrFrameTooLarge", err)
		}
		if r.extra != 0 {
			t.Fatalf("read %d bytes past the header", r.extra)
		}
	}
	runtime.ReadMemStats(&after)
	if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > 4<<10 {
		t.Errorf("allocated %d bytes per refused frame", perRun)
	}
}

func TestReadFrameGrowsWithData(t *testing.T) {
	// A peer that claims 1 MiB and sends 10 bytes costs far less than 1 MiB.
	input := append(binary.BigEndian.AppendUint32(nil, MaxFrameSize), make([]byte, 10)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := ReadFrame(bytes.NewReader(input)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10 {
		t.Errorf("allocated %d bytes for a 10-byte truncated frame", got)
	}
}

// TestRawBytesAfterFrame: the codec reads exactly one frame, so the raw
// bytes after it are still on the stream.
func TestRawBytesAfterFrame(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf)
	blob := []byte("raw bytes, not JSON")
	if err := c.Send(&ArtifactsHeader{Size: int64(len(blob))}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendBlob(bytes.NewReader(blob), int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ExitAck{}); err != nil {
		t.Fatal(err)
	}
	h, err := Expect[*ArtifactsHeader](c)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := c.RecvBlob(&got, h.Size); err != nil || got.String() != string(blob) {
		t.Fatalf("blob %q, %v", got.String(), err)
	}
	if _, err := Expect[ExitAck](c); err != nil {
		t.Fatal(err)
	}
}

func TestExpectErrors(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf)
	c.Send(&Refused{Code: RefusedForbidden, Message: "container c1 has forge.build=b2, not b1"})
	_, err := Expect[*LaunchReady](c)
	var re *RefusedError
	if !errors.As(err, &re) || re.Code != RefusedForbidden || re.Want != TypeLaunchReady {
		t.Fatalf("got %v, want *RefusedError", err)
	}
	if want := "want launch_ready, got refused: container c1 has forge.build=b2, not b1 (code forbidden)"; err.Error() != want {
		t.Errorf("got %q\nwant %q", err, want)
	}

	c.Send(&Hello{Protocol: 1, NodeID: "n"})
	_, err = Expect[Welcome](c)
	if !errors.Is(err, ErrUnexpectedMessage) || !strings.Contains(err.Error(), "want welcome, got hello") {
		t.Errorf("got %v", err)
	}

	c.Send(&Refused{Code: RefusedBusy, Message: "later"})
	if _, err = c.ExpectType(TypeStarted); !errors.As(err, &re) || re.Want != TypeStarted {
		t.Errorf("ExpectType: got %v", err)
	}
	c.Send(&Started{ContainerID: "c"})
	if m, err := c.ExpectType(TypeStarted); err != nil || m.(*Started).ContainerID != "c" {
		t.Errorf("ExpectType: got %v, %v", m, err)
	}

	buf.Write(frame(`{"type":"from_the_future"}`))
	if _, err = Expect[*Started](c); !errors.Is(err, ErrUnknownType) || !strings.Contains(err.Error(), "from_the_future") {
		t.Errorf("got %v", err)
	}
	if _, err = c.Recv(); err != io.EOF {
		t.Errorf("at end: got %v, want io.EOF", err)
	}
}

func TestBlobs(t *testing.T) {
	data := []byte("0123456789")
	var out bytes.Buffer
	if err := SendBlob(&out, bytes.NewReader(data), 4); err != nil || out.String() != "0123" {
		t.Errorf("exact size: %q, %v", out.String(), err)
	}
	if err := SendBlob(io.Discard, bytes.NewReader(data), 11); !errors.Is(err, ErrShortBlob) {
		t.Errorf("short source: %v", err)
	}
	if err := SendBlob(io.Discard, iotest.ErrReader(io.ErrClosedPipe), 1); !errors.Is(err, io.ErrClosedPipe) || errors.Is(err, ErrShortBlob) {
		t.Errorf("failing source: %v", err)
	}
	err := RecvBlob(bytes.NewReader(data), 11, io.Discard)
	if !errors.Is(err, ErrShortBlob) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short stream: %v", err)
	}
	out.Reset()
	if err := RecvBlob(iotest.HalfReader(bytes.NewReader(data)), 10, &out); err != nil || out.String() != string(data) {
		t.Errorf("recv: %q, %v", out.String(), err)
	}
	if err := RecvBlob(bytes.NewReader(data), 0, &out); err != nil {
		t.Errorf("empty blob: %v", err)
	}
	if err := RecvBlob(bytes.NewReader(data), 3, failWriter{}); err == nil || !strings.Contains(err.Error(), "write destination") {
		t.Errorf("failing destination: %v", err)
	}

	ref, err := BlobRefOf(bytes.NewReader(data))
	if want := fmt.Sprintf("sha256:%x", sha256.Sum256(data)); err != nil || ref.Digest != want || ref.Size != 10 {
		t.Fatalf("BlobRefOf: %+v, %v", ref, err)
	}
	if err := RecvBlobVerified(bytes.NewReader(data), ref, io.Discard); err != nil {
		t.Errorf("verified: %v", err)
	}
	bad := bytes.Clone(data)
	bad[3] ^= 1
	if err := RecvBlobVerified(bytes.NewReader(bad), ref, io.Discard); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("tampered: %v", err)
	}
	if err := RecvBlobVerified(bytes.NewReader(data), BlobRef{Digest: "sha256:ABC", Size: 10}, io.Discard); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("bad digest: %v", err)
	}
}

// TestBlobReader: a reader of the next size bytes stops there, leaving
// the rest of the stream, and says when the stream ends short.
func TestBlobReader(t *testing.T) {
	src := bytes.NewReader([]byte("0123456789"))
	got, err := io.ReadAll(iotest.OneByteReader(BlobReader(src, 4)))
	if err != nil || string(got) != "0123" {
		t.Fatalf("first 4: %q, %v", got, err)
	}
	got, err = io.ReadAll(BlobReader(src, 0))
	if err != nil || len(got) != 0 {
		t.Fatalf("empty: %q, %v", got, err)
	}
	got, err = io.ReadAll(BlobReader(src, 9))
	if !errors.Is(err, ErrShortBlob) || !errors.Is(err, io.ErrUnexpectedEOF) || string(got) != "456789" {
		t.Fatalf("short: %q, %v", got, err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
