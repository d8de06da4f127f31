package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenName is the file name given to Parse in the golden tests, so the
// goldens read like what a user sees.
const goldenName = ".forge.yml"

// checkGolden compares got with the golden file, or rewrites it with
// -update.
func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("differs from %s (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
}

// configJSON shows a Config in the goldens, with the timeout readable.
func configJSON(t *testing.T, cfg *Config) []byte {
	t.Helper()
	view := struct {
		*Config
		Timeout string
	}{cfg, cfg.Timeout.String()}
	b, err := json.MarshalIndent(view, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestGoodFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/good/*.yml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(goldenName, data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkInvariants(t, cfg)
			checkGolden(t, strings.TrimSuffix(file, ".yml")+".json", configJSON(t, cfg))
		})
	}
}

func TestBadFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yml")
	if err != nil || len(files) < 20 {
		t.Fatalf("want at least 20 bad files, have %d: %v", len(files), err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(goldenName, data)
			if err == nil {
				t.Fatalf("Parse accepted the file: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			checkErrorList(t, err)
			checkGolden(t, strings.TrimSuffix(file, ".yml")+".err", []byte(err.Error()+"\n"))
		})
	}
}

// checkErrorList checks the shape every Parse error has: only *Error
// values, one per line of text, each naming the file, sorted by line.
func checkErrorList(t *testing.T, err error) {
	t.Helper()
	var first *Error
	if !errors.As(err, &first) {
		t.Fatalf("errors.As found no *Error in %v", err)
	}
	list := Errors(err)
	lines := strings.Split(err.Error(), "\n")
	if len(list) != len(lines) {
		t.Errorf("Errors returned %d errors for %d lines of text", len(list), len(lines))
	}
	if list[0] != first {
		t.Errorf("errors.As and Errors disagree on the first error")
	}
	last := 0
	for i, e := range list {
		if e.File != goldenName || e.Msg == "" {
			t.Errorf("error %d: bad fields %+v", i, e)
		}
		if i < len(lines) && lines[i] != e.Error() {
			t.Errorf("line %d is %q, want %q", i, lines[i], e.Error())
		}
		line := e.Line
		if line == 0 {
			line = 1 << 30 // file-level errors come last
		}
		if line < last {
			t.Errorf("errors not sorted by line: %v", err)
		}
		last = line
	}
}

// checkInvariants holds for every config Parse returns.
func checkInvariants(t *testing.T, cfg *Config) {
	t.Helper()
	if cfg.Image == "" {
		t.Error("no image")
	}
	if len(cfg.Actions[DefaultAction]) == 0 {
		t.Error("no execute commands")
	}
	for name, cmds := range cfg.Actions {
		if len(cmds) == 0 || !actionNameRE.MatchString(name) {
			t.Errorf("bad action %q: %q", name, cmds)
		}
		for _, c := range cmds {
			if strings.TrimSpace(c) == "" {
				t.Errorf("action %s has an empty command", name)
			}
		}
	}
	if _, ok := cfg.Actions["setup"]; ok {
		t.Error("setup is an action")
	}
	for branch, action := range cfg.OnPush {
		if _, ok := cfg.Actions[action]; !ok {
			t.Errorf("on.push.%s names a missing action %q", branch, action)
		}
	}
	for k := range cfg.Environment {
		if k == "CI" || strings.HasPrefix(k, "FORGE_") || !envNameRE.MatchString(k) {
			t.Errorf("environment has %q", k)
		}
	}
	if cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout {
		t.Errorf("timeout %v", cfg.Timeout)
	}
	if !strings.HasPrefix(cfg.Workdir, "/") || cfg.Workdir == "/" || cleanPath(cfg.Workdir) != cfg.Workdir {
		t.Errorf("workdir %q", cfg.Workdir)
	}
	if c := cfg.Cache; c != nil {
		if len(c.Paths) == 0 || len(c.Paths) > MaxCachePaths {
			t.Errorf("cache paths %q", c.Paths)
		}
		for _, p := range c.ContainerPaths(cfg.Workdir) {
			if !strings.HasPrefix(p, "/") || p == "/" || cleanPath(p) != p || p == cfg.Workdir || strings.HasPrefix(cfg.Workdir, p+"/") {
				t.Errorf("cache path %q (workdir %s)", p, cfg.Workdir)
			}
		}
		if _, msg := ParseKey(c.Key); c.Key != "" && msg != "" {
			t.Errorf("cache key %q: %s", c.Key, msg)
		}
	}
	for _, a := range cfg.Artifacts {
		if strings.HasPrefix(a, "/") || hasDotDot(a) {
			t.Errorf("artifact %q", a)
		}
	}
	if cfg.Resources.NanoCPUs < 0 || cfg.Resources.MemoryBytes < 0 ||
		(cfg.Resources.MemoryBytes != 0 && cfg.Resources.MemoryBytes < MinMemoryBytes) {
		t.Errorf("resources %+v", cfg.Resources)
	}
	for _, c := range cfg.Constraints {
		if checkConstraint(c) != "" {
			t.Errorf("constraint %q", c)
		}
	}
	for _, p := range cfg.Ports {
		if p.Published == 0 || p.Target == 0 || (p.Protocol != "tcp" && p.Protocol != "udp" && p.Protocol != "sctp") {
			t.Errorf("port %+v", p)
		}
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("", []byte("image: busybox\nexecute: [make]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timeout != time.Hour || cfg.Workdir != "/forge/src" {
		t.Errorf("defaults: timeout %v, workdir %q", cfg.Timeout, cfg.Workdir)
	}
	if cfg.Environment != nil || cfg.OnPush != nil || cfg.Setup != nil {
		t.Errorf("absent keys should stay nil: %+v", cfg)
	}
}

func TestEmptyFilenameDefaults(t *testing.T) {
	_, err := Parse("", nil)
	if err == nil || err.Error() != ".forge.yml: empty file" {
		t.Errorf("got %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	data := append([]byte("image: busybox\nexecute: [make]\n#"), bytes.Repeat([]byte("x"), MaxSize)...)
	_, err := Parse("f.yml", data)
	if err == nil || !strings.Contains(err.Error(), "larger than 1024 KiB") {
		t.Errorf("got %v", err)
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"6291456", 6 << 20},
		{"6MiB", 6 << 20},
		{"6mb", 6 << 20},
		{"6M", 6 << 20},
		{"4GiB", 4 << 30},
		{"4 GB", 4 << 30},
		{"1.5g", 3 << 29},
		{"0.5TiB", 1 << 39},
		{"10000k", 10000 << 10},
		{"8388608b", 8 << 20},
	} {
		cfg, err := Parse("f", []byte("image: x\nexecute: [y]\nresources: {memory: "+tc.in+"}\n"))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if cfg.Resources.MemoryBytes != tc.want {
			t.Errorf("%s: got %d, want %d", tc.in, cfg.Resources.MemoryBytes, tc.want)
		}
	}
}

func TestCPUs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1", 1e9},
		{"0.5", 5e8},
		{"'1.5'", 15e8},
		{".25", 25e7},
		{"2.", 2e9},
		{"0.000000001", 1},
		{"3.1000000000", 31e8},
		{"007", 7e9},
	} {
		cfg, err := Parse("f", []byte("image: x\nexecute: [y]\nresources: {cpus: "+tc.in+"}\n"))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if cfg.Resources.NanoCPUs != tc.want {
			t.Errorf("%s: got %d, want %d", tc.in, cfg.Resources.NanoCPUs, tc.want)
		}
	}
}

func TestSummary(t *testing.T) {
	_, err := Parse(".forge.yml", []byte("imagee: busybox\ntimeout: 3 days\n"))
	if err == nil {
		t.Fatal("no error")
	}
	for _, tc := range []struct {
		max  int
		want string
	}{
		{0, `.forge.yml:1:1: unknown key "imagee" (+3 more)`},
		{140, `.forge.yml:1:1: unknown key "imagee" (+3 more)`},
		{40, `.forge.yml:1:1: unknown key "… (+3 more)`},
		{12, `.forge.yml:…`},
		{1, `…`},
	} {
		got := Summary(err, tc.max)
		if got != tc.want {
			t.Errorf("Summary(%d) = %q, want %q", tc.max, got, tc.want)
		}
		if tc.max > 0 && len([]rune(got)) > tc.max {
			t.Errorf("Summary(%d) is %d characters", tc.max, len([]rune(got)))
		}
	}
	if got := Summary(errors.New("plain\n  error"), 140); got != "plain error" {
		t.Errorf("plain error: %q", got)
	}
	if got := Summary(nil, 140); got != "" {
		t.Errorf("nil: %q", got)
	}
}

func TestErrorsUnwrapsWrapped(t *testing.T) {
	_, err := Parse(".forge.yml", []byte("imagee: x\n"))
	wrapped := errorsJoinWrap(err)
	if got := len(Errors(wrapped)); got != 3 {
		t.Errorf("Errors found %d errors through wrapping, want 3: %v", got, wrapped)
	}
	var e *Error
	if !errors.As(wrapped, &e) || e.Line != 1 {
		t.Errorf("errors.As: %+v", e)
	}
}

func errorsJoinWrap(err error) error {
	return errors.Join(errors.New("plan build"), &wrapErr{err})
}

type wrapErr struct{ err error }

func (w *wrapErr) Error() string { return "read config: " + w.err.Error() }
func (w *wrapErr) Unwrap() error { return w.err }

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: ".forge.yml", Line: 7, Column: 3, Key: "timeout", Msg: `"3 days" is not a duration (use 30m, 1h)`}, `.forge.yml:7:3: timeout: "3 days" is not a duration (use 30m, 1h)`},
		{Error{File: ".forge.yml", Line: 2, Column: 1, Msg: `unknown key "imagee"`}, `.forge.yml:2:1: unknown key "imagee"`},
		{Error{File: ".forge.yml", Msg: "image is required"}, `.forge.yml: image is required`},
		{Error{File: "f", Line: 4, Msg: "invalid YAML: x"}, `f:4: invalid YAML: x`},
		{Error{Key: "k", Msg: "m"}, `k: m`},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}
