package config

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"path"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// The value parsers below return a message instead of an error: the caller
// knows the node and key and builds the *Error.

var (
	cpusRE   = regexp.MustCompile(`^([0-9]*)(?:\.([0-9]*))?$`)
	memoryRE = regexp.MustCompile(`^([0-9]+)(?:\.([0-9]+))?[ \t]*([A-Za-z]*)$`)

	// Swarm's own checks (swarmkit's manager/constraint), repeated here
	// so a bad constraint fails at parse time with its line number instead
	// of at service creation.
	constraintKeyRE   = regexp.MustCompile(`^(?i)[a-z_][a-z0-9\-_.]+$`)
	constraintValueRE = regexp.MustCompile(`^(?i)[a-z0-9:\-_\s\.\*\(\)\?\+\[\]\\\^\$\|\/]+$`)
)

// memoryUnits follows Docker (go-units RAMInBytes, used by docker run
// --memory and compose): every unit is a power of 1024, whether written
// k, kb or kib.
var memoryUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// parseCPUs reads `cpus: 2`, `cpus: 0.5` or `cpus: "1.5"` as NanoCPUs.
// The decimal is converted exactly (no float rounding), as Docker does.
func parseCPUs(v *yaml.Node) (int64, string) {
	const hint = `(use 2, 0.5 or "1.5")`
	switch {
	case isNull(v):
		return 0, "must not be empty " + hint
	case v.Kind != yaml.ScalarNode || !numberOrString(v):
		return 0, fmt.Sprintf("must be a number of CPUs %s, got %s", hint, describe(v))
	}
	s := strings.TrimSpace(v.Value)
	m := cpusRE.FindStringSubmatch(s)
	if m == nil || m[1]+m[2] == "" {
		return 0, fmt.Sprintf("%s is not a number of CPUs %s", quote(v.Value), hint)
	}
	whole := strings.TrimLeft(m[1], "0")
	frac := strings.TrimRight(m[2], "0")
	switch {
	case len(whole) > 6:
		return 0, fmt.Sprintf("%s is more CPUs than any machine has", quote(v.Value))
	case len(frac) > 9:
		return 0, fmt.Sprintf("%s is too precise (at most 9 decimal places)", quote(v.Value))
	}
	var nano int64
	if whole != "" {
		w, _ := strconv.ParseInt(whole, 10, 64) // at most 6 digits
		nano = w * 1e9
	}
	if frac != "" {
		f, _ := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		nano += f
	}
	if nano == 0 {
		return 0, "must be more than 0"
	}
	return nano, ""
}

// parseMemory reads `memory: 4GiB`, `512m`, `1.5g` or a number of bytes.
func parseMemory(v *yaml.Node) (int64, string) {
	const hint = "(use 512MiB, 4GiB)"
	switch {
	case isNull(v):
		return 0, "must not be empty " + hint
	case v.Kind != yaml.ScalarNode || !numberOrString(v):
		return 0, fmt.Sprintf("must be a size %s, got %s", hint, describe(v))
	}
	m := memoryRE.FindStringSubmatch(strings.TrimSpace(v.Value))
	if m == nil {
		return 0, fmt.Sprintf("%s is not a size %s", quote(v.Value), hint)
	}
	unit, ok := memoryUnits[strings.ToLower(m[3])]
	switch {
	case !ok:
		return 0, fmt.Sprintf("%s has an unknown unit %s", quote(v.Value), hint)
	case m[2] != "" && unit == 1:
		return 0, fmt.Sprintf("%s: bytes must be a whole number", quote(v.Value))
	case len(m[1]) > 20 || len(m[2]) > 20:
		return 0, fmt.Sprintf("%s is too large", quote(v.Value))
	}
	// Exact decimal arithmetic: (whole.frac * unit), rounded down to a
	// byte. The digit counts are bounded above, so this is cheap.
	num, _ := new(big.Int).SetString(m[1]+m[2], 10)
	num.Mul(num, big.NewInt(unit))
	num.Quo(num, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(m[2]))), nil))
	switch {
	case num.Cmp(big.NewInt(math.MaxInt64)) > 0:
		return 0, fmt.Sprintf("%s is too large", quote(v.Value))
	case num.Int64() < MinMemoryBytes:
		return 0, fmt.Sprintf("%s is below Docker's minimum of 6MiB", quote(v.Value))
	}
	return num.Int64(), ""
}

// parsePort reads `8000`, "8000:8000" or "8000:8000/udp" (published:target).
func parsePort(v *yaml.Node) (Port, string) {
	const hint = `(use 8000, "8000:8000" or "8000:8000/udp")`
	switch {
	case isNull(v):
		return Port{}, "empty port " + hint
	case v.Kind != yaml.ScalarNode || (v.ShortTag() != "!!int" && v.ShortTag() != "!!str"):
		return Port{}, fmt.Sprintf("must be a port %s, got %s", hint, describe(v))
	}
	s, proto := strings.TrimSpace(v.Value), "tcp"
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s, proto = s[:i], strings.ToLower(s[i+1:])
		if proto != "tcp" && proto != "udp" && proto != "sctp" {
			return Port{}, fmt.Sprintf("%s: unknown protocol %s (use tcp, udp or sctp)", quote(v.Value), quote(proto))
		}
	}
	parts := strings.Split(s, ":")
	if len(parts) > 2 {
		return Port{}, fmt.Sprintf("%s is not a port %s; a host address cannot be given", quote(v.Value), hint)
	}
	nums := make([]uint16, len(parts))
	for i, part := range parts {
		n, ok := portNumber(part)
		if !ok {
			return Port{}, fmt.Sprintf("%s: %s is not a port number (1 to 65535)", quote(v.Value), quote(part))
		}
		nums[i] = n
	}
	p := Port{Published: nums[0], Target: nums[0], Protocol: proto}
	if len(nums) == 2 {
		p.Target = nums[1]
	}
	return p, ""
}

func portNumber(s string) (uint16, bool) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// checkConstraint applies swarm's rules for a placement constraint and
// returns what is wrong, or "".
func checkConstraint(s string) string {
	for _, op := range []string{"==", "!="} {
		key, value, found := strings.Cut(s, op)
		if !found {
			continue
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch {
		case key == "":
			return fmt.Sprintf("%s has nothing before %s", quote(s), op)
		case value == "":
			return fmt.Sprintf("%s has nothing after %s", quote(s), op)
		case !constraintKeyRE.MatchString(key):
			return fmt.Sprintf("%s: %s is not a valid key (like node.labels.ci or node.role)", quote(s), quote(key))
		case !constraintValueRE.MatchString(value):
			return fmt.Sprintf("%s: %s is not a valid value", quote(s), quote(value))
		}
		return ""
	}
	return fmt.Sprintf("%s is not a placement constraint: use key==value or key!=value", quote(s))
}

func numberOrString(v *yaml.Node) bool {
	switch v.ShortTag() {
	case "!!int", "!!float", "!!str":
		return true
	}
	return false
}

func isControl(r rune) bool { return unicode.IsControl(r) }

func isSpaceOrControl(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

func cleanPath(s string) string { return path.Clean(s) }

// ReservedVar reports whether k is a variable Forge sets itself, which
// neither environment nor secrets may name: CI and FORGE_*.
func ReservedVar(k string) bool { return k == "CI" || strings.HasPrefix(k, "FORGE_") }

// underAny reports whether dir is one of roots or inside one.
func underAny(dir string, roots []string) bool {
	for _, r := range roots {
		if dir == r || strings.HasPrefix(dir, r+"/") {
			return true
		}
	}
	return false
}

// hasDotDot reports whether any element of the slash-separated path is "..".
// Checked on the path as written, not cleaned: "a/../../b" and "a/../b" are
// both refused, which keeps the rule simple to state.
func hasDotDot(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return true
		}
	}
	return false
}

// validGlob reports whether p is a well-formed path.Match pattern.
func validGlob(p string) bool {
	_, err := path.Match(p, "")
	return err == nil
}

// ParseMemory reads a size written as in .forge.yml's resources.memory
// (4GiB, 512m, 1.5g or a number of bytes), for the coordinator's flags.
func ParseMemory(s string) (int64, error) {
	n, msg := parseMemory(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s})
	if msg != "" {
		return 0, errors.New(msg)
	}
	return n, nil
}

// ParseCPUs reads a number of CPUs written as in .forge.yml's
// resources.cpus (2, 0.5) as NanoCPUs, for the coordinator's flags.
func ParseCPUs(s string) (int64, error) {
	n, msg := parseCPUs(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s})
	if msg != "" {
		return 0, errors.New(msg)
	}
	return n, nil
}

// FormatMemory writes bytes in the largest power-of-1024 unit that divides
// them (8GiB, 1536MiB), the way ParseMemory reads them back.
func FormatMemory(n int64) string {
	for _, u := range []struct {
		size int64
		name string
	}{{1 << 40, "TiB"}, {1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// FormatCPUs writes NanoCPUs as a decimal number of CPUs (1.5), exactly.
func FormatCPUs(nano int64) string {
	s := strconv.FormatInt(nano/1e9, 10)
	if frac := nano % 1e9; frac != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%09d", frac), "0")
	}
	return s
}
