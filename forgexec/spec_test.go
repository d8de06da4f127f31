package forgexec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDecodeSpecGood(t *testing.T) {
	in := `{
		"version": 1,
		"build_id": "b-42",
		"action": "execute",
		"setup": ["go mod download"],
		"commands": ["go vet ./...", "go test ./..."],
		"env": {"GOFLAGS": "-mod=mod"},
		"workdir": "/src",
		"timeout": "30m"
	}`
	got, err := DecodeSpec(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := &Spec{
		Version:  1,
		BuildID:  "b-42",
		Action:   "execute",
		Setup:    []string{"go mod download"},
		Commands: []string{"go vet ./...", "go test ./..."},
		Env:      map[string]string{"GOFLAGS": "-mod=mod"},
		Workdir:  "/src",
		Timeout:  Duration(30 * time.Minute),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func TestDecodeSpecDefaults(t *testing.T) {
	s, err := DecodeSpec(strings.NewReader(`{"version":1,"commands":["true"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.WorkdirOrDefault() != "/forge/src" {
		t.Errorf("default workdir = %q", s.WorkdirOrDefault())
	}
	if s.Timeout != 0 {
		t.Errorf("default timeout = %v", s.Timeout)
	}
}

func TestDecodeSpecErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no version", `{"commands":["x"]}`, "version: missing, want 1"},
		{"wrong version", `{"version":2,"commands":["x"]}`, "version: unsupported version 2, want 1"},
		{"no commands", `{"version":1}`, "commands: at least one command is required"},
		{"empty commands", `{"version":1,"commands":[]}`, "commands: at least one command is required"},
		{"blank command", `{"version":1,"commands":["x"," "]}`, "commands[1]: empty command"},
		{"blank setup", `{"version":1,"setup":[""],"commands":["x"]}`, "setup[0]: empty command"},
		{"NUL in command", `{"version":1,"commands":["a\u0000b"]}`, "commands[0]: contains a NUL byte"},
		{"unknown field", `{"version":1,"commands":["x"],"bogus":true}`, `unknown field "bogus"`},
		{"wrong type", `{"version":1,"commands":"x"}`, "Spec.commands"},
		{"relative workdir", `{"version":1,"commands":["x"],"workdir":"src"}`, `workdir: must be an absolute path, got "src"`},
		{"negative timeout", `{"version":1,"commands":["x"],"timeout":"-1s"}`, "timeout: must not be negative, got -1s"},
		{"bad timeout", `{"version":1,"commands":["x"],"timeout":"soon"}`, `timeout: time: invalid duration "soon"`},
		{"numeric timeout", `{"version":1,"commands":["x"],"timeout":30}`, `timeout: want a duration string like "30m", got 30`},
		{"bad env name", `{"version":1,"commands":["x"],"env":{"A=B":"c"}}`, `env: invalid variable name "A=B"`},
		{"empty env name", `{"version":1,"commands":["x"],"env":{"":"c"}}`, `env: invalid variable name ""`},
		{"trailing data", `{"version":1,"commands":["x"]} {}`, "unexpected data after the JSON object"},
		{"not JSON", `version: 1`, "decode spec: invalid character"},
		{"empty", ``, "decode spec: EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := DecodeSpec(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("no error, spec %+v", s)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	var s *Spec
	if err := s.Validate(); err == nil {
		t.Fatal("nil spec validated")
	}
}

func TestLoadSpec(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "build.json")
	if err := os.WriteFile(good, []byte(`{"version":1,"commands":["true"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSpec(good); err != nil {
		t.Fatal(err)
	}

	missing := filepath.Join(dir, "missing.json")
	_, err := LoadSpec(missing)
	if err == nil || !strings.Contains(err.Error(), "read spec "+missing) {
		t.Fatalf("missing file: error %v does not name the path", err)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"version":3,"commands":["true"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadSpec(bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "version 3") {
		t.Fatalf("bad file: error %v should name the path and the version", err)
	}
}

func TestDurationJSON(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		json string
	}{
		{0, `"0s"`},
		{90 * time.Second, `"1m30s"`},
		{time.Hour, `"1h0m0s"`},
		{1500 * time.Millisecond, `"1.5s"`},
	} {
		b, err := json.Marshal(Duration(tc.d))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.json {
			t.Errorf("marshal %v = %s, want %s", tc.d, b, tc.json)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if time.Duration(back) != tc.d {
			t.Errorf("round trip of %v gave %v", tc.d, back)
		}
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"1h30m"`), &d); err != nil || time.Duration(d) != 90*time.Minute {
		t.Errorf(`"1h30m" = %v, %v`, d, err)
	}
}

func TestSpecRoundTrip(t *testing.T) {
	s := &Spec{
		Version:  SpecVersion,
		BuildID:  "b",
		Action:   "deploy",
		Commands: []string{"make"},
		Env:      map[string]string{"A": "1"},
		Timeout:  Duration(time.Hour),
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"timeout":"1h0m0s"`) {
		t.Errorf("timeout not written as a string: %s", b)
	}
	back, err := DecodeSpec(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Fatalf("round trip: got %+v, want %+v", back, s)
	}
	// A zero timeout is left out rather than written as "0s".
	s.Timeout = 0
	b, _ = json.Marshal(s)
	if strings.Contains(string(b), "timeout") {
		t.Errorf("zero timeout written: %s", b)
	}
}
