package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCacheMessageRules: every rule of the cache messages (PROTOCOL.md
// §5.6, §5.22, §5.23) is enforced on decode, naming what is wrong.
func TestCacheMessageRules(t *testing.T) {
	launch := func(cache string) string {
		return `{"type":"launch","build_id":"b","container_id":"c","executor":{"digest":"sha256:` + strings.Repeat("0", 64) +
			`","size":1},"spec":{},"workdir":"/w","cache":` + cache + `}`
	}
	tests := []struct {
		payload, text string
	}{
		{launch(`{"paths":[],"size":0}`), "without paths"},
		{launch(`{"paths":["relative/x"],"size":0}`), "not an absolute, clean path"},
		{launch(`{"paths":["/a/../b"],"size":0}`), "not an absolute, clean path"},
		{launch(`{"paths":["/"],"size":0}`), "the root"},
		{launch(`{"paths":["/a"],"size":-1}`), "negative cache size"},
		{launch(`{"paths":["/a"],"size":0,"save":true}`), "max_bytes"},
		{launch(`{"paths":["/a\u0000b"],"size":0}`), "NUL"},
		{launch(`{"paths":[` + strings.Repeat(`"/a",`, MaxCachePaths) + `"/a"],"size":0}`), "paths, max"},
		{`{"type":"cache_save","build_id":"","container_id":"c","size":0}`, "build_id"},
		{`{"type":"cache_save","build_id":"b","container_id":"c","size":-5}`, "negative size"},
		{`{"type":"cache_save","build_id":"b","container_id":"c","size":0,"notes":[""]}`, "a note of 0 bytes"},
		{`{"type":"cache_saved","digest":"sha256:zz","size":1}`, "digest"},
		{`{"type":"cache_saved","digest":"","size":-1}`, "negative size"},
		{`{"type":"attached","next_seq":1,"stdout_offset":0,"stderr_offset":0,"done":false,"cache":{"paths":["/a"],"size":0,"max_bytes":1}}`, "want save and no size"},
		{`{"type":"attached","next_seq":1,"stdout_offset":0,"stderr_offset":0,"done":false,"cache":{"paths":["/a"],"size":3,"save":true,"max_bytes":1}}`, "want save and no size"},
		{`{"type":"attached","next_seq":1,"stdout_offset":0,"stderr_offset":0,"done":false,"cache":{"paths":["/a"],"size":0,"save":true}}`, "attached: cache save with max_bytes 0"},
		{`{"type":"attached","next_seq":1,"stdout_offset":0,"stderr_offset":0,"done":false,"cache":{"paths":["a"],"size":0,"save":true,"max_bytes":1}}`, "attached: cache path"},
	}
	for _, tt := range tests {
		_, err := DecodeMessage([]byte(tt.payload))
		if !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), tt.text) {
			t.Errorf("%.90s: got %v, want ErrInvalidMessage naming %q", tt.payload, err, tt.text)
		}
	}
	notes := make([]string, MaxCacheNotes+1)
	for i := range notes {
		notes[i] = "n"
	}
	if _, err := EncodeMessage(&CacheSave{BuildID: "b", ContainerID: "c", Notes: notes}); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("too many notes: %v", err)
	}
	// A launch without a cache encodes without the field: older agents
	// see the Launch they know.
	p, err := EncodeMessage(&Launch{BuildID: "b", ContainerID: "c", Executor: BlobRef{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1}, Spec: json.RawMessage(`{}`)})
	if err != nil || strings.Contains(string(p), "cache") {
		t.Errorf("launch without cache: %s, %v", p, err)
	}
	// Nor does an attached: older agents see the attached they know.
	if p, err := EncodeMessage(&Attached{NextSeq: 1}); err != nil || strings.Contains(string(p), "cache") {
		t.Errorf("attached without cache: %s, %v", p, err)
	}
}

func TestCacheNote(t *testing.T) {
	if got := CacheNote("short"); got != "short" {
		t.Errorf("short note: %q", got)
	}
	long := strings.Repeat("é", MaxCacheNote) // 2 bytes each
	got := CacheNote(long)
	if len(got) > MaxCacheNote || !utf8.ValidString(got) || !strings.HasSuffix(got, cacheNoteCut) {
		t.Errorf("long note: %d bytes, valid %v, %q...", len(got), utf8.ValidString(got), got[len(got)-8:])
	}
	if err := (CacheSave{BuildID: "b", ContainerID: "c", Notes: []string{got, CacheNote("")}}).Validate(); err != nil {
		t.Error(err)
	}
}

// A note cut by CutNote stays within its bound as the peer decodes it:
// invalid UTF-8 (which JSON would widen to U+FFFD, 3 bytes each) and
// characters cut in half included.
func TestCutNote(t *testing.T) {
	for name, s := range map[string]string{
		"invalid bytes": strings.Repeat("\xff", 400),
		"long cyrillic": strings.Repeat("ж", 600),
		"mixed":         strings.Repeat("a\xffж", 300),
	} {
		note := CutNote(s, MaxNoteSize, "...")
		p, err := EncodeMessage(&ArtifactsHeader{Notes: []string{note}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		m, err := DecodeMessage(p)
		if err != nil {
			t.Errorf("%s: the peer refuses the note: %v", name, err)
			continue
		}
		if got := m.(*ArtifactsHeader).Notes[0]; got != note || !utf8.ValidString(got) {
			t.Errorf("%s: note changed on the way: %d bytes sent, %d decoded", name, len(note), len(got))
		}
	}
	if got := CutNote("plain", MaxNoteSize, "..."); got != "plain" {
		t.Errorf("a short note: %q", got)
	}
}
