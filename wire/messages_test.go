package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func intp(i int) *int { return &i }

// sampleMessages returns one filled-in value of every registered type, as
// pointers (the form DecodeMessage returns). Times are UTC without a
// monotonic reading so they survive JSON unchanged.
func sampleMessages() []Message {
	ts := time.Date(2025, 3, 1, 12, 30, 45, 123456789, time.UTC)
	return []Message{
		&Hello{Protocol: ProtocolVersion, NodeID: "n1", Hostname: "node-1", AgentVersion: "v1", EngineVersion: "28.5.2", Features: []string{FeatureCache}},
		&Welcome{Protocol: ProtocolVersion, CoordinatorVersion: "v1", SessionID: "s-1"},
		&Refused{Code: RefusedBusy, Message: "try later"},
		&Holding{Builds: []Held{
			{BuildID: "b1", ContainerID: "c1", State: StateRunning},
			{BuildID: "b2", ContainerID: "c2", State: StateExited, ExitCode: intp(1)},
		}},
		&Landed{BuildID: "b1", ContainerID: "c1", Created: ts},
		&Launch{BuildID: "b1", ContainerID: "c1",
			Executor: BlobRef{Digest: "sha256:" + strings.Repeat("ab", 32), Size: 1234},
			Spec:     json.RawMessage(`{"image":"golang:1.22"}`), SourceSize: 99, Workdir: "/forge/src",
			Cache:   &LaunchCache{Paths: []string{"/root/.cache/go-build", "/forge/src/node_modules"}, Size: 10240, Save: true, MaxBytes: 1 << 30},
			Secrets: []Secret{{Name: "DEPLOY_TOKEN", Value: SecretValue("s3cret\n\xff")}}},
		&LaunchReady{NeedExecutor: true},
		&Started{ContainerID: "c1", StartedAt: ts},
		&Cancel{BuildID: "b1", ContainerID: "c1", GraceSeconds: 10},
		&Cancelled{ExitCode: intp(143)},
		&Attach{BuildID: "b1", ContainerID: "c1"},
		&Attached{NextSeq: 7, StdoutOffset: 100, StderrOffset: 5, Done: true},
		&Attached{NextSeq: 1, Cache: &LaunchCache{Paths: []string{"/root/.cache/go-build"}, Save: true, MaxBytes: 1 << 30}},
		&Log{Seq: 7, Stream: StreamStderr, Offset: 5, Data: []byte("line\n\x00\xff")},
		&LogAck{Seq: 7},
		&Exit{ExitCode: 2, LastSeq: 7, FinishedAt: ts, Error: ""},
		&ExitAck{},
		&ArtifactsRequest{BuildID: "b1", ContainerID: "c1", Workdir: "/forge/src", Paths: []string{"coverage.out", "dist/*"}, MaxBytes: 1 << 30},
		&ArtifactsHeader{Size: 4096, Notes: []string{"dist/*.zip matches nothing"}},
		&Join{Protocol: ProtocolVersion, Token: "forge_join_x", NodeID: "p8u3hq2v5r9x1ktbz0d7lm4ae", CSR: []byte{0x30, 0x82, 1}},
		&Renew{CSR: []byte{0x30, 0x82, 2}},
		&Issued{Certificate: []byte{0x30, 0x82, 3}},
		&CacheSave{BuildID: "b1", ContainerID: "c1", Size: 10240, Notes: []string{"cache: /root/.npm does not exist; not saved"}},
		&CacheReady{},
		&CacheSaved{Digest: "sha256:" + strings.Repeat("cd", 32), Size: 10240},
	}
}

func sameMessage(got, want Message) error {
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("got %#v, want %#v", got, want)
	}
	return nil
}

func TestEveryTypeRoundTrips(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range sampleMessages() {
		t.Run(m.MessageType(), func(t *testing.T) {
			seen[m.MessageType()] = true
			payload, err := EncodeMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(payload), `{"type":"`+m.MessageType()+`"`) {
				t.Errorf("payload %s does not start with its type", payload)
			}
			got, err := DecodeMessage(payload)
			if err != nil {
				t.Fatal(err)
			}
			if err := sameMessage(got, m); err != nil {
				t.Error(err)
			}
			// The struct form encodes the same way.
			byValue, err := EncodeMessage(reflect.ValueOf(m).Elem().Interface().(Message))
			if err != nil || string(byValue) != string(payload) {
				t.Errorf("by value: %s, %v; want %s", byValue, err, payload)
			}
		})
	}
	if got, want := len(seen), len(registeredTypes()); got != want {
		t.Errorf("sampleMessages covers %d types, registry has %d: %v", got, want, registeredTypes())
	}
}

// TestTypeNames pins the wire names: changing one breaks compatibility.
func TestTypeNames(t *testing.T) {
	want := map[string]Message{
		"hello": Hello{}, "welcome": Welcome{}, "refused": Refused{}, "holding": Holding{},
		"landed": Landed{}, "launch": Launch{}, "launch_ready": LaunchReady{}, "started": Started{},
		"cancel": Cancel{}, "cancelled": Cancelled{}, "attach": Attach{}, "attached": Attached{},
		"log": Log{}, "log_ack": LogAck{}, "exit": Exit{}, "exit_ack": ExitAck{},
		"artifacts_request": ArtifactsRequest{}, "artifacts_header": ArtifactsHeader{},
		"join": Join{}, "renew": Renew{}, "issued": Issued{},
		"cache_save": CacheSave{}, "cache_ready": CacheReady{}, "cache_saved": CacheSaved{},
	}
	if len(want) != len(registry) {
		t.Fatalf("registry has %d types, test knows %d", len(registry), len(want))
	}
	for name, m := range want {
		if m.MessageType() != name {
			t.Errorf("%T.MessageType() = %q, want %q", m, m.MessageType(), name)
		}
		if registry[name] != reflect.TypeOf(m) {
			t.Errorf("registry[%q] = %v, want %T", name, registry[name], m)
		}
	}
}

// TestFieldNames pins the JSON field names of a few messages, which must
// be snake_case.
func TestFieldNames(t *testing.T) {
	for _, m := range sampleMessages() {
		payload, err := EncodeMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(payload, &fields); err != nil {
			t.Fatal(err)
		}
		for k := range fields {
			if k != strings.ToLower(k) || strings.ContainsAny(k, "- ") {
				t.Errorf("%s: field %q is not snake_case", m.MessageType(), k)
			}
		}
	}
	payload, _ := EncodeMessage(&Attached{NextSeq: 1, StdoutOffset: 2, StderrOffset: 3})
	if want := `{"type":"attached","next_seq":1,"stdout_offset":2,"stderr_offset":3,"done":false}`; string(payload) != want {
		t.Errorf("got %s, want %s", payload, want)
	}
	payload, _ = EncodeMessage(ExitAck{})
	if want := `{"type":"exit_ack"}`; string(payload) != want {
		t.Errorf("got %s, want %s", payload, want)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		payload string
		want    error
		text    string
	}{
		{`{"type":"teleport","to":"mars"}`, ErrUnknownType, `"teleport"`},
		{`{"build_id":"x"}`, ErrMalformed, `no "type"`},
		{`[1,2]`, ErrMalformed, ""},
		{`{"type":7}`, ErrMalformed, ""},
		{`{"type":"log_ack","seq":"seven"}`, ErrMalformed, "log_ack"},
		{`not json`, ErrMalformed, ""},
		{`{"type":"log","seq":1,"stream":"stdin","offset":0,"data":"eA=="}`, ErrInvalidMessage, "stdin"},
		{`{"type":"log","seq":0,"stream":"stdout","offset":0,"data":"eA=="}`, ErrInvalidMessage, "seq 0"},
		{`{"type":"hello","protocol":1}`, ErrInvalidMessage, "node_id"},
		{`{"type":"launch","build_id":"b","container_id":"c","executor":{"digest":"md5:00","size":1},"spec":{}}`, ErrInvalidMessage, "digest"},
		{`{"type":"artifacts_request","build_id":"b","container_id":"c","workdir":"src","paths":["a"],"max_bytes":1}`, ErrInvalidMessage, "workdir"},
		{`{"type":"artifacts_request","build_id":"b","container_id":"c","workdir":"/src","paths":["a"],"max_bytes":0}`, ErrInvalidMessage, "max_bytes"},
		{`{"type":"artifacts_header","size":-1}`, ErrInvalidMessage, "negative"},
		{`{"type":"artifacts_header","size":1,"notes":["` + strings.Repeat("n", MaxNoteSize+1) + `"]}`, ErrInvalidMessage, "note"},
		{`{"type":"artifacts_header","size":1,"notes":[` + strings.Repeat(`"n",`, MaxArtifactNotes) + `"n"]}`, ErrInvalidMessage, "notes"},
	}
	for _, tt := range tests {
		_, err := DecodeMessage([]byte(tt.payload))
		if !errors.Is(err, tt.want) || !strings.Contains(fmt.Sprint(err), tt.text) {
			t.Errorf("%s: got %v, want %v containing %q", tt.payload, err, tt.want, tt.text)
		}
	}
	// Unknown fields are ignored: a newer peer may add optional ones.
	m, err := DecodeMessage([]byte(`{"type":"log_ack","seq":3,"window":9}`))
	if err != nil || m.(*LogAck).Seq != 3 {
		t.Errorf("unknown field: %v, %v", m, err)
	}
}

type notRegistered struct{}

func (notRegistered) MessageType() string { return "hello" }

func TestEncodeErrors(t *testing.T) {
	bigLog := &Log{Seq: 1, Stream: StreamStdout, Data: make([]byte, MaxLogChunk+1)}
	bigSpec := &Launch{BuildID: "b", ContainerID: "c", Executor: BlobRef{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1},
		Spec: json.RawMessage(`"` + strings.Repeat("a", MaxSpecSize) + `"`)}
	var nilHello *Hello
	tests := []struct {
		msg  Message
		want error
	}{
		{nil, ErrInvalidMessage},
		{nilHello, ErrInvalidMessage},
		{notRegistered{}, ErrUnknownType},
		{bigLog, ErrInvalidMessage},
		{bigSpec, ErrInvalidMessage},
		{&Holding{Builds: []Held{{BuildID: "b", ContainerID: "c", State: StateExited}}}, ErrInvalidMessage},
		{&Launch{BuildID: "b", ContainerID: "c", Executor: BlobRef{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1},
			Spec: json.RawMessage(`{`)}, nil}, // invalid JSON: a marshal error
	}
	for _, tt := range tests {
		_, err := EncodeMessage(tt.msg)
		if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Errorf("%#v: got %v, want %v", tt.msg, err, tt.want)
		}
	}
}

func TestProtocolRefusal(t *testing.T) {
	if r := ProtocolRefusal(ProtocolVersion); r != nil {
		t.Errorf("same version refused: %v", r)
	}
	r := ProtocolRefusal(ProtocolVersion + 1)
	if r == nil || r.Code != RefusedProtocol {
		t.Fatalf("got %v", r)
	}
	for _, v := range []int{ProtocolVersion, ProtocolVersion + 1} {
		if !strings.Contains(r.Message, fmt.Sprint(v)) {
			t.Errorf("message %q does not name version %d", r.Message, v)
		}
	}
}

// TestProtocolExamples decodes every JSON example of PROTOCOL.md, so the
// document cannot drift from the code, and checks each type has one.
func TestProtocolExamples(t *testing.T) {
	doc, err := os.ReadFile("PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	blocks := strings.Split(string(doc), "```json\n")[1:]
	for _, b := range blocks {
		example, _, ok := strings.Cut(b, "```")
		if !ok {
			t.Fatalf("unterminated example: %s", b)
		}
		m, err := DecodeMessage([]byte(strings.TrimSpace(example)))
		if err != nil {
			t.Errorf("example %s: %v", example, err)
			continue
		}
		seen[m.MessageType()] = true
		// Examples are written the way the encoder writes them.
		enc, err := EncodeMessage(m)
		if err != nil || string(enc) != strings.TrimSpace(example) {
			t.Errorf("example\n%s\nre-encodes as\n%s (%v)", strings.TrimSpace(example), enc, err)
		}
	}
	for _, typ := range registeredTypes() {
		if !seen[typ] {
			t.Errorf("PROTOCOL.md has no example of %s", typ)
		}
	}
}

// TestDecodeFastPath: DecodeMessage's scan for the type agrees with a
// full decode on payloads made to confuse it, and gives the same errors.
func TestDecodeFastPath(t *testing.T) {
	for _, p := range []string{
		`{"type":"log_ack","seq":3}`,
		` { "seq" : 3 , "type" : "log_ack" } `,
		`{"x":{"type":"hello"},"type":"log_ack","seq":3}`,
		`{"x":["}","{\"type\":\"hello\"",{"a":[1,{}]}],"type":"log_ack","seq":3}`,
		`{"type":"hello","type":"log_ack","seq":3}`,
		`{"typ\u0065":"log_ack","seq":3}`,
		`{"Type":"log_ack","seq":3}`,
		`{"type":"log_ack","type":7}`,
		`{"type":"log_\u0061ck","seq":3}`,
		`{"type":"log_ack","seq":3} {}`,
		`{"type":"log_ack","seq":3`,
		`{"type":"log_ack","seq":3,}`,
		`{"type":"log_ack" "seq":3}`,
		`{"seq":tru,"type":"log_ack"}`,
		`{"type":"exit_ack"}`,
		`{"type":"exit_ack","x":"\"}"}`,
		`{}`,
		`null`,
	} {
		fast, ferr := DecodeMessage([]byte(p))
		slow, serr := decodeSlow([]byte(p))
		if fmt.Sprint(ferr) != fmt.Sprint(serr) || !reflect.DeepEqual(fast, slow) {
			t.Errorf("%s: fast %#v, %v; full decode %#v, %v", p, fast, ferr, slow, serr)
		}
	}
}
