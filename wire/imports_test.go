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
	out := goList(t, "-deps", "-test", "-tags", "cluster", "-f", `{{.ImportPath}}|{{join .Imports " "}}`, "./...")
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

// TestHouseRules keeps the other import rules of DESIGN.md §1 and the
// coordinator's layout: wire imports nothing else of the module; agent
// and coordinator never import each other; forgexec only the standard
// library; the coordinator's root (the domain) none of its sub-packages.
func TestHouseRules(t *testing.T) {
	out := goList(t, "-f", `{{.ImportPath}}|{{.Standard}}|{{join .Deps " "}}`,
		"./wire", "./agent/...", "./forgexec/...", "./cmd/forgexec", "./coordinator/...")
	under := func(p, root string) bool { return p == root || strings.HasPrefix(p, root+"/") }
	checked := 0
	for line := range strings.Lines(string(out)) {
		parts := strings.SplitN(strings.TrimSpace(line), "|", 3)
		if len(parts) != 3 {
			continue
		}
		pkg, deps := parts[0], strings.Fields(parts[2])
		checked++
		for _, d := range deps {
			var why string
			switch {
			case pkg == module+"/wire" && under(d, module):
				why = "wire imports nothing else of this module"
			case under(pkg, module+"/agent") && under(d, module+"/coordinator"):
				why = "agent and coordinator never import each other"
			case under(pkg, module+"/coordinator") && under(d, module+"/agent"):
				why = "agent and coordinator never import each other"
			case (under(pkg, module+"/forgexec") || pkg == module+"/cmd/forgexec") && !isStandard(d) && !under(d, module+"/forgexec"):
				why = "forgexec uses the standard library only"
			case pkg == module+"/coordinator" && strings.HasPrefix(d, module+"/coordinator/") && d != module+"/coordinator/config":
				why = "the coordinator's root holds the domain; its parts import it, not the other way"
			}
			if why != "" {
				t.Errorf("%s depends on %s: %s", pkg, d, why)
			}
		}
	}
	if checked < 5 {
		t.Errorf("go list named %d packages; the listing is not what this test expects:\n%s", checked, out)
	}
}

// isStandard tells a standard-library import path: no dot in its first
// element.
func isStandard(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

// goList runs `go list args...` at the module's root.
func goList(t *testing.T, args ...string) []byte {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("this test runs the go command: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, append([]string{"list"}, args...)...)
	cmd.Dir = ".." // the module's root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	return out
}
