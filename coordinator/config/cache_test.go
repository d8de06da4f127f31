package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	good := []struct {
		in   string
		want []KeyPart
	}{
		{"v1", []KeyPart{{Text: "v1"}}},
		{`{{hashFiles "go.sum"}}`, []KeyPart{{Func: KeyHashFiles, Args: []string{"go.sum"}}}},
		{"go-{{ branch }}-{{ hashFiles `a b.lock` \"**/go.sum\" }}", []KeyPart{
			{Text: "go-"}, {Func: KeyBranch}, {Text: "-"}, {Func: KeyHashFiles, Args: []string{"a b.lock", "**/go.sum"}}}},
	}
	for _, tt := range good {
		got, msg := ParseKey(tt.in)
		if msg != "" || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseKey(%q) = %+v, %q; want %+v", tt.in, got, msg, tt.want)
		}
	}
	bad := map[string]string{
		"":                            "must not be empty",
		"  ":                          "must not be empty",
		"a}}b":                        `"}}" without "{{"`,
		"{{ branch }}}}":              `"}}" without "{{"`,
		"{{ branch":                   `"{{" without "}}"`,
		"{{ }}":                       "empty {{ }}",
		"{{ branch x }}":              "branch takes no arguments",
		"{{ hashFiles }}":             "at least one file pattern",
		`{{ hashFiles "" }}`:          "empty pattern",
		`{{ hashFiles "/etc/x" }}`:    "is absolute",
		`{{ hashFiles "a/../../b" }}`: "leaves the repository",
		`{{ hashFiles "[a-" }}`:       "not a valid pattern",
		`{{ hashFiles "a }}`:          "unterminated",
		`{{ hashFiles "a""b" }}`:      "put a space",
		`{{ hashFiles go.sum }}`:      "quote patterns",
		`{{ hash"Files" }}`:           "quote patterns whole",
		`{{ env "HOME" }}`:            `unknown function "env"`,
		"a\tb":                        "control characters",
		`{{ hashFiles ` + strings.Repeat(`"a" `, maxKeyPatterns+1) + `}}`: "at most",
	}
	for in, want := range bad {
		if parts, msg := ParseKey(in); !strings.Contains(msg, want) {
			t.Errorf("ParseKey(%q) = %+v, %q; want a message with %q", in, parts, msg, want)
		}
	}
}

func TestMatchFiles(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"go.sum", "go.sum", true},
		{"go.sum", "sub/go.sum", false},
		{"**/go.sum", "go.sum", true},
		{"**/go.sum", "a/b/go.sum", true},
		{"**/go.sum", "a/b/go.summary", false},
		{"*/go.sum", "a/go.sum", true},
		{"*/go.sum", "a/b/go.sum", false},
		{"web/**", "web/a/b.js", true},
		{"web/**", "web", true},
		{"web/**/*.lock", "web/x/y/z.lock", true},
		{"web/**/*.lock", "api/z.lock", false},
		{"[ab].txt", "a.txt", true},
	}
	for _, tt := range tests {
		if got := MatchFiles(tt.pattern, tt.name); got != tt.want {
			t.Errorf("MatchFiles(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestResolveKey(t *testing.T) {
	cfg, err := Parse(".forge.yml", []byte("image: x\nexecute: [y]\nworkdir: /w\ncache:\n  paths: [/root/.m2, target]\n  key: 'm2-{{ branch }}-{{ hashFiles \"pom.xml\" \"**/pom.xml\" }}'\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Cache
	if got := c.ContainerPaths(cfg.Workdir); !reflect.DeepEqual(got, []string{"/root/.m2", "/w/target"}) {
		t.Errorf("container paths %q", got)
	}
	if !c.HashesFiles() {
		t.Error("HashesFiles false")
	}
	var asked []string
	key, err := c.ResolveKey("feature/x", func(p []string) (string, error) { asked = p; return "h4sh", nil })
	if err != nil || key != "m2-feature/x-h4sh" || !reflect.DeepEqual(asked, []string{"pom.xml", "**/pom.xml"}) {
		t.Errorf("key %q, %v; patterns %q", key, err, asked)
	}
	boom := errors.New("boom")
	if _, err := c.ResolveKey("main", func([]string) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Errorf("hash error: %v", err)
	}
	if (&Cache{KeyParts: []KeyPart{{Func: KeyBranch}}}).HashesFiles() {
		t.Error("branch-only key hashes files")
	}
}
