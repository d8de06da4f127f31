package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
)

// FuzzReadFrame feeds arbitrary bytes to the frame decoder and the message
// decoder. It checks that nothing panics, that payloads respect
// MaxFrameSize, that a frame read back re-encodes to exactly the bytes it
// came from, that only the frame's bytes are consumed, and that a decoded
// message re-encodes to a stable form, and that DecodeMessage's fast
// path decodes as the full decode does.
func FuzzReadFrame(f *testing.F) {
	for _, m := range sampleMessages() {
		payload, err := EncodeMessage(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(frame(string(payload)))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 9, '{'})
	f.Add(frame(`{"type":"unknown"}`))
	f.Add(append(frame(`{"type":"artifacts_header","size":3}`), "tar"...))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		payload, err := ReadFrame(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
				!errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrEmptyFrame) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if len(payload) == 0 || len(payload) > MaxFrameSize {
			t.Fatalf("payload of %d bytes", len(payload))
		}
		consumed := len(data) - r.Len()
		if consumed != FrameHeaderSize+len(payload) {
			t.Fatalf("consumed %d bytes for a %d-byte payload", consumed, len(payload))
		}
		var re bytes.Buffer
		if err := WriteFrame(&re, payload); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(re.Bytes(), data[:consumed]) {
			t.Fatalf("re-encoded frame differs")
		}

		msg, err := DecodeMessage(payload)
		// The fast path (a scan for the type, one decode) agrees with
		// the full decode, errors included.
		if slow, serr := decodeSlow(payload); fmt.Sprint(err) != fmt.Sprint(serr) || !reflect.DeepEqual(msg, slow) {
			t.Fatalf("DecodeMessage %#v, %v; full decode %#v, %v", msg, err, slow, serr)
		}
		if err != nil {
			return
		}
		enc1, err := EncodeMessage(msg)
		if err != nil {
			t.Fatalf("decoded %s does not encode: %v", msg.MessageType(), err)
		}
		msg2, err := DecodeMessage(enc1)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v\n%s", msg.MessageType(), err, enc1)
		}
		enc2, err := EncodeMessage(msg2)
		if err != nil || !bytes.Equal(enc1, enc2) {
			t.Fatalf("encoding not stable: %v\n%s\n%s", err, enc1, enc2)
		}
	})
}
