package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"
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

// FuzzCheckCSR feeds arbitrary bytes to the check of an agent's
// certificate request (Join, Renew). It checks that nothing panics, and
// that what passes is signed, for ECDSA P-256, and names nothing but the
// node's URI; and that SignAgent then issues a certificate for that node
// alone.
func FuzzCheckCSR(f *testing.F) {
	ca, err := NewCA("fuzz CA", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, err := NewKey()
	if err != nil {
		f.Fatal(err)
	}
	good, err := NewCSR(key, "n1")
	if err != nil {
		f.Fatal(err)
	}
	other, _ := NewCSR(key, "n2")
	f.Add(good)
	f.Add(other)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := CheckCSR(der, "n1")
		if err != nil {
			if !errors.Is(err, ErrBadCSR) {
				t.Fatalf("error not classified as ErrBadCSR: %v", err)
			}
			return
		}
		if csr.CheckSignature() != nil || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 ||
			len(csr.URIs) > 1 || len(csr.URIs) == 1 && csr.URIs[0].String() != AgentURI("n1").String() {
			t.Fatalf("accepted a request that breaks the rules: %+v", csr)
		}
		cert, err := ca.SignAgent(der, "n1", "n1", time.Hour)
		if err != nil {
			t.Fatalf("SignAgent after CheckCSR passed: %v", err)
		}
		if n, err := NodeOf(cert); n != "n1" || err != nil || len(cert.URIs) != 1 || len(cert.DNSNames) > 0 {
			t.Fatalf("issued %v %v %v", n, err, cert.URIs)
		}
	})
}
