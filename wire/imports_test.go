package wire_test

import (
	"context"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	module    = "github.com/forge-ci/forge"
	yamuxPath = "github.com/hashicorp/yamux"
)

// TestOnlyWireImportsYamux keeps the rule of the house (DESIGN.md §1):
// no package of the module imports hashicorp/yamux but wire and its own
// tests, so every other package reaches yamux through Session and Stream,
// which apply the write-timeout rule. Test files and the cluster tests
// count too.
func TestOnlyWireImportsYamux(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("this test runs the go command: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, "list", "-deps", "-test", "-tags", "cluster",
		"-f", `{{.ImportPath}}|{{join .Imports " "}}`, "./...")
	cmd.Dir = ".." // the module's root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	allowed := map[string]bool{module + "/wire": true, module + "/wire_test": true}
	importers := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		path, imports, _ := strings.Cut(strings.TrimSpace(line), "|")
		path, _, _ = strings.Cut(path, " ") // "p [p.test]" is p compiled for its tests
		if (path == module || strings.HasPrefix(path, module+"/")) && slices.Contains(strings.Fields(imports), yamuxPath) {
			importers[path] = true
		}
	}
	for _, p := range slices.Sorted(maps.Keys(importers)) {
		if !allowed[p] {
			t.Errorf("%s imports %s: use wire.Session and wire.Stream", p, yamuxPath)
		}
	}
	if !importers[module+"/wire"] { // the listing is not what this test expects
		t.Errorf("go list does not show wire importing %s:\n%s", yamuxPath, out)
	}
}
