package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParse feeds arbitrary bytes to Parse. Whatever the input, Parse must
// not panic, must return either a valid config or a list of *Error, and
// must be deterministic. Seeds: every file under testdata.
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 30s ./coordinator/config/
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/good/*.yml", "testdata/bad/*.yml"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(goldenName, data)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("want exactly one of config and error, got %v and %v", cfg, err)
		}
		_, err2 := Parse(goldenName, data)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("not deterministic:\n%v\n%v", err, err2)
		}
		if err == nil {
			checkInvariants(t, cfg)
			return
		}
		if strings.Contains(err.Error(), "internal error") {
			t.Fatalf("Parse panicked: %v", err)
		}
		checkErrorList(t, err)
		if s := Summary(err, 140); utf8.RuneCountInString(s) > 140 || strings.Contains(s, "\n") {
			t.Fatalf("Summary too long or not one line: %q", s)
		}
	})
}
