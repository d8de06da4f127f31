package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

var (
	actionNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)
	envNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// yamlLineRE picks the line out of a yaml.v3 syntax error.
	yamlLineRE = regexp.MustCompile(`^yaml: line ([0-9]+): (.*)$`)
)

// maxActionName keeps action names short enough for commit-status contexts
// and labels.
const maxActionName = 63

// Parse reads a .forge.yml. filename is only used in error messages (it
// defaults to ".forge.yml"). On success the returned Config is valid and
// has its defaults filled in. Otherwise the error is an errors.Join of one
// *Error per problem, in file order; see [Errors] and [Summary].
//
// Parse never panics, whatever the input: the coordinator parses files
// pushed by anyone who can open a pull request.
func Parse(filename string, data []byte) (cfg *Config, err error) {
	if filename == "" {
		filename = ".forge.yml"
	}
	p := &parser{file: filename}
	defer func() {
		// yaml.v3 is a translation of libyaml and has had crashes on
		// crafted input before; a bad file must fail its build, not the
		// coordinator.
		if r := recover(); r != nil {
			cfg = nil
			err = joinErrors([]*Error{{File: filename, Msg: fmt.Sprintf("internal error while parsing: %v", r)}})
		}
	}()
	root := p.document(data)
	if root == nil {
		return nil, p.result()
	}
	cfg = p.config(root)
	if err := p.result(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parser collects the problems found while walking one file.
type parser struct {
	file string
	errs []*Error
}

// errAt records a problem at node n (which may be nil for a file-level
// problem).
func (p *parser) errAt(n *yaml.Node, key, format string, args ...any) {
	e := &Error{File: p.file, Key: key, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	p.errs = append(p.errs, e)
}

func (p *parser) result() error {
	sortErrors(p.errs)
	return joinErrors(p.errs)
}

// document checks the raw bytes and parses them into a node tree, returning
// the root value, or nil after recording why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	if len(data) > MaxSize {
		p.errAt(nil, "", "the file is larger than %d KiB", MaxSize>>10)
		return nil
	}
	if pos, msg := checkText(data); msg != "" {
		p.errs = append(p.errs, &Error{File: p.file, Line: pos.line, Column: pos.col, Msg: msg})
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errAt(nil, "", "empty file")
		} else {
			p.syntaxError(err, data)
		}
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.syntaxError(err, data)
		return nil
	default:
		// A second document would be silently ignored by most readers;
		// saying so beats a build that ignores half the file.
		p.errAt(&next, "", `more than one YAML document (a "---" line starts a new one); put everything in one document`)
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.errAt(nil, "", "empty file")
		return nil
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		p.errAt(nil, "", "empty file")
		return nil
	}
	if expandedSize(root) > MaxValues {
		p.errAt(nil, "", "the file holds more than %d values once its aliases are expanded", MaxValues)
		return nil
	}
	return root
}

// parserProblems are the messages of libyaml's parser (as opposed to its
// scanner). yaml.v3 prints their line counting from 0.
var parserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// syntaxError records a YAML syntax error. yaml.v3 gives no column, and a
// line that is that of the construct being read when it failed (a mapping
// for "did not find expected key"), so at or shortly before the mistake.
// It leaves the line out when it is the first one, and counts from 0 for
// parser errors but from 1 for scanner errors; this evens that out.
func (p *parser) syntaxError(err error, data []byte) {
	msg, line := err.Error(), 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil {
			line = n
		}
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if parserProblems[msg] || line == 0 {
		line++
	}
	col := 0
	// This one comes without a position; the alias is easy to find.
	if m := unknownAnchorRE.FindStringSubmatch(msg); m != nil {
		if pos, found := findAlias(data, m[1]); found {
			line, col = pos.line, pos.col
		}
	}
	switch {
	case strings.Contains(msg, "mapping values are not allowed"):
		msg += ` (quote values that contain ": ", like "echo a: b")`
	case strings.Contains(msg, "found character that cannot start any token") && bytes.Contains(data, []byte("\t")):
		msg += " (YAML does not allow tabs for indentation)"
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Column: col, Msg: "invalid YAML: " + msg})
}

var unknownAnchorRE = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// findAlias returns the position of the first "*name" alias in data.
func findAlias(data []byte, name string) (position, bool) {
	text := string(data)
	for off := 0; ; {
		i := strings.Index(text[off:], "*"+name)
		if i < 0 {
			return position{}, false
		}
		i += off
		end := i + 1 + len(name)
		// An alias name runs up to a space, a line break or a flow
		// indicator; a longer name is another alias.
		if end == len(text) || strings.ContainsRune(" \t\r\n,[]{}", rune(text[end])) {
			before := text[:i]
			line := strings.Count(before, "\n") + 1
			col := utf8.RuneCountInString(before[strings.LastIndexByte(before, '\n')+1:]) + 1
			return position{line, col}, true
		}
		off = i + 1
	}
}

type position struct{ line, col int }

// checkText refuses bytes that are not UTF-8 or hold characters YAML does
// not allow, with a position: yaml.v3 reports these without one.
func checkText(data []byte) (position, string) {
	pos := position{1, 1}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return pos, "the file is not valid UTF-8"
		case !yamlPrintable(r):
			return pos, fmt.Sprintf("character %U is not allowed in YAML", r)
		}
		i += size
		switch {
		case r == '\n', r == '\r' && (i >= len(data) || data[i] != '\n'):
			pos.line++
			pos.col = 1
		case r != '\r':
			pos.col++
		}
	}
	return pos, ""
}

// yamlPrintable is YAML 1.2's c-printable set, the one yaml.v3 enforces.
func yamlPrintable(r rune) bool {
	switch {
	case r == '\t', r == '\n', r == '\r', r == 0x85:
		return true
	case r >= 0x20 && r <= 0x7e, r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd, r >= 0x10000 && r <= 0x10ffff:
		return true
	}
	return false
}

// expandedSize counts the values under n with every alias expanded,
// stopping just past MaxValues. Memoised per node, so it runs in time
// linear in the parsed tree even when the expansion is exponential; an
// alias to a value that contains it counts once.
func expandedSize(n *yaml.Node) int {
	memo := map[*yaml.Node]int{}
	var size func(*yaml.Node) int
	size = func(n *yaml.Node) int {
		if n == nil {
			return 0
		}
		if n.Kind == yaml.AliasNode {
			return size(n.Alias)
		}
		if v, ok := memo[n]; ok {
			if v < 0 { // a cycle: n contains an alias to itself
				return 1
			}
			return v
		}
		memo[n] = -1
		total := 1
		for _, c := range n.Content {
			total += size(c)
			if total > MaxValues {
				total = MaxValues + 1
				break
			}
		}
		memo[n] = total
		return total
	}
	return size(n)
}

// pushRule is one on.push entry, checked against the actions once the
// whole file has been read (actions may come after `on`).
type pushRule struct {
	branch, action string
	node           *yaml.Node
}

func (p *parser) config(root *yaml.Node) *Config {
	cfg := &Config{
		Actions: map[string][]string{},
		Timeout: DefaultTimeout,
		Workdir: DefaultWorkdir,
	}
	if root.Kind != yaml.MappingNode {
		p.errAt(root, "", "the top level must be a mapping of keys (image:, execute:, ...), got %s", describe(root))
		return cfg
	}
	var (
		haveImage, haveExecute bool
		rules                  []pushRule
		cacheNodes             []*yaml.Node
		secrets                *yaml.Node // checked once the actions and environment are known
		// declared holds every action key, even one whose commands are
		// invalid, so that on.push does not also report it as missing.
		declared = map[string]bool{}
	)
	for _, e := range p.entries(root, "") {
		v := resolve(e.v)
		switch e.key {
		case "image":
			haveImage = true
			cfg.Image = p.image(v)
		case "environment":
			cfg.Environment = p.environment(v)
		case "setup":
			cfg.Setup = p.commands(v, "setup", false)
		case "on":
			rules = p.on(v)
		case "artifacts":
			cfg.Artifacts = p.artifacts(v)
		case "timeout":
			if d, ok := p.timeout(v); ok {
				cfg.Timeout = d
			}
		case "workdir":
			if w, ok := p.workdir(v); ok {
				cfg.Workdir = w
			}
		case "resources":
			cfg.Resources = p.resources(v)
		case "constraints":
			cfg.Constraints = p.constraints(v)
		case "ports":
			cfg.Ports = p.ports(v)
		case "cache":
			cfg.Cache, cacheNodes = p.cache(v)
		case "secrets":
			secrets = v
		case DefaultAction:
			haveExecute = true
			declared[e.key] = true
			if cmds := p.commands(v, e.key, true); cmds != nil {
				cfg.Actions[e.key] = cmds
			}
		default:
			if v.Kind != yaml.SequenceNode {
				p.errAt(e.k, "", "unknown key %s", quote(e.key))
				continue
			}
			if !actionNameRE.MatchString(e.key) || len(e.key) > maxActionName {
				p.errAt(e.k, "", "invalid action name %s: use lower-case letters, digits, - and _, starting with a letter (at most %d)", quote(e.key), maxActionName)
				continue
			}
			declared[e.key] = true
			if cmds := p.commands(v, e.key, true); cmds != nil {
				cfg.Actions[e.key] = cmds
			}
		}
	}
	for _, r := range rules {
		if !declared[r.action] {
			hint := "define it as a top-level list of commands"
			if r.action == "setup" {
				hint = "setup runs before every action and is not an action itself"
			}
			p.errAt(r.node, "on.push."+r.branch, "action %s is not defined (%s)", quote(r.action), hint)
			continue
		}
		if cfg.OnPush == nil {
			cfg.OnPush = map[string]string{}
		}
		cfg.OnPush[r.branch] = r.action
	}
	p.checkCache(cacheNodes, cfg.Cache, cfg.Workdir)
	if secrets != nil {
		cfg.Secrets, cfg.ActionSecrets = p.secrets(secrets, declared, cfg.Environment)
	}
	if !haveImage {
		p.errAt(nil, "", "image is required")
	}
	if !haveExecute {
		p.errAt(nil, "", "execute is required (the commands run for pull requests)")
	}
	return cfg
}

// entry is one key: value pair of a mapping.
type entry struct {
	key  string
	k, v *yaml.Node
}

// entries lists a mapping's pairs, reporting keys that are not plain
// scalars, merge keys and repeated keys (yaml.v3 only refuses duplicates
// when decoding into Go values, not into nodes). path names the mapping in
// errors.
func (p *parser) entries(m *yaml.Node, path string) []entry {
	var out []entry
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		rk := resolve(k)
		switch {
		case rk == nil || rk.Kind != yaml.ScalarNode:
			p.errAt(k, path, "a key must be a plain word, got %s", describe(rk))
			continue
		case rk.ShortTag() == "!!merge":
			// Supporting merges would mean deciding which of two
			// positions to blame for a bad value; the few keys of a
			// .forge.yml are easier to write out.
			p.errAt(k, path, "merge keys (<<) are not supported; write the keys out")
			continue
		}
		name := rk.Value
		if line, dup := seen[name]; dup {
			p.errAt(k, path, "duplicate key %s (first at line %d)", quote(name), line)
			continue
		}
		seen[name] = k.Line
		out = append(out, entry{key: name, k: k, v: v})
	}
	return out
}

func (p *parser) image(v *yaml.Node) string {
	s, ok := p.str(v, "image")
	if !ok {
		return ""
	}
	switch {
	case strings.TrimSpace(s) == "":
		p.errAt(v, "image", "must not be empty")
		return ""
	case strings.IndexFunc(s, isSpaceOrControl) >= 0:
		p.errAt(v, "image", "%s is not an image reference (like golang:1.22): it contains spaces or control characters", quote(s))
		return ""
	}
	return s
}

// commands reads a list of commands (setup or an action). required says
// that a missing or empty list is an error. It returns nil when there is a
// problem.
func (p *parser) commands(v *yaml.Node, key string, required bool) []string {
	if isNull(v) || (v.Kind == yaml.SequenceNode && len(v.Content) == 0) {
		if required {
			p.errAt(v, key, "must list at least one command")
		}
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.errAt(v, key, "must be a list of commands, got %s", describe(v))
		return nil
	}
	out := make([]string, 0, len(v.Content))
	ok := true
	for _, item := range v.Content {
		it := resolve(item)
		switch {
		case it.Kind == yaml.MappingNode:
			p.errAt(it, key, `a command must be a string, got a mapping; quote commands that contain ": " (- "echo a: b")`)
		case it.Kind == yaml.SequenceNode:
			p.errAt(it, key, "a command must be a string, got a list")
		case isNull(it):
			p.errAt(it, key, "empty command")
		case it.Kind != yaml.ScalarNode:
			p.errAt(it, key, "a command must be a string, got %s", describe(it))
		case it.ShortTag() != "!!str":
			p.errAt(it, key, "a command must be a string, got %s; quote it: - %s", describe(it), strconv.Quote(it.Value))
		case strings.TrimSpace(it.Value) == "":
			p.errAt(it, key, "empty command")
		case strings.ContainsRune(it.Value, 0):
			p.errAt(it, key, "a command must not contain a NUL character")
		default:
			out = append(out, it.Value)
			continue
		}
		ok = false
	}
	if !ok {
		return nil
	}
	return out
}

func (p *parser) environment(v *yaml.Node) map[string]string {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.MappingNode {
		p.errAt(v, "environment", "must be a mapping of NAME: value, got %s", describe(v))
		return nil
	}
	env := map[string]string{}
	for _, e := range p.entries(v, "environment") {
		switch {
		case !envNameRE.MatchString(e.key):
			p.errAt(e.k, "environment", "invalid variable name %s: use letters, digits and _, not starting with a digit", quote(e.key))
			continue
		case ReservedVar(e.key):
			p.errAt(e.k, "environment", "%s is reserved: Forge sets CI and FORGE_* itself", e.key)
			continue
		}
		path := "environment." + e.key
		val := resolve(e.v)
		switch {
		case isNull(val):
			p.errAt(val, path, `no value; write %s: "" for an empty value`, e.key)
		case val.Kind != yaml.ScalarNode:
			p.errAt(val, path, "must be a string, number or boolean, got %s", describe(val))
		case !scalarTextTags[val.ShortTag()]:
			p.errAt(val, path, "must be a string, number or boolean, got %s; quote it", describe(val))
		case strings.ContainsRune(val.Value, 0):
			p.errAt(val, path, "must not contain a NUL character")
		default:
			env[e.key] = val.Value
		}
	}
	return env
}

// scalarTextTags are the scalar types an environment value may have.
var scalarTextTags = map[string]bool{"!!str": true, "!!int": true, "!!float": true, "!!bool": true}

func (p *parser) on(v *yaml.Node) []pushRule {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.MappingNode {
		p.errAt(v, "on", "must be a mapping like {push: {main: deploy}}, got %s", describe(v))
		return nil
	}
	var rules []pushRule
	for _, e := range p.entries(v, "on") {
		if e.key != "push" {
			p.errAt(e.k, "on", "unknown key %s (only push is supported; pull requests run execute)", quote(e.key))
			continue
		}
		pv := resolve(e.v)
		if isNull(pv) {
			continue
		}
		if pv.Kind != yaml.MappingNode {
			p.errAt(pv, "on.push", "must be a mapping of branch: action, got %s", describe(pv))
			continue
		}
		for _, b := range p.entries(pv, "on.push") {
			switch {
			case strings.TrimSpace(b.key) == "" || strings.IndexFunc(b.key, isSpaceOrControl) >= 0:
				p.errAt(b.k, "on.push", "%s is not a branch name", quote(b.key))
				continue
			case strings.ContainsAny(b.key, "*?["):
				// git refuses these characters in branch names, so
				// they can only be an attempt at a pattern.
				p.errAt(b.k, "on.push", "branch %s: patterns are not supported; list each branch by its exact name", quote(b.key))
				continue
			}
			path := "on.push." + b.key
			av := resolve(b.v)
			if isNull(av) {
				p.errAt(av, path, "must name an action")
				continue
			}
			name, ok := p.str(av, path)
			if !ok {
				continue
			}
			rules = append(rules, pushRule{branch: b.key, action: name, node: av})
		}
	}
	return rules
}

func (p *parser) timeout(v *yaml.Node) (_ time.Duration, ok bool) {
	const hint = "(use 30m, 1h)"
	switch {
	case isNull(v):
		p.errAt(v, "timeout", "must not be empty %s", hint)
		return 0, false
	case v.Kind != yaml.ScalarNode:
		p.errAt(v, "timeout", "must be a duration %s, got %s", hint, describe(v))
		return 0, false
	case v.ShortTag() == "!!int" || v.ShortTag() == "!!float":
		p.errAt(v, "timeout", "%s has no unit %s", shortValue(v.Value), hint)
		return 0, false
	}
	d, err := time.ParseDuration(strings.TrimSpace(v.Value))
	switch {
	case err != nil:
		p.errAt(v, "timeout", "%s is not a duration %s", quote(v.Value), hint)
	case d <= 0:
		p.errAt(v, "timeout", "must be longer than 0")
	case d > MaxTimeout:
		p.errAt(v, "timeout", "%s is longer than the maximum of 24h", shortValue(v.Value))
	default:
		return d, true
	}
	return 0, false
}

// reservedDirs can be neither the work directory nor a cache: the
// kernel's file systems, and the paths where the agent puts the executor
// and its spec.
var reservedDirs = []string{"/proc", "/sys", "/dev", "/.forge", "/forgexec"}

func (p *parser) workdir(v *yaml.Node) (string, bool) {
	s, ok := p.str(v, "workdir")
	if !ok {
		return "", false
	}
	switch {
	case !strings.HasPrefix(s, "/"):
		p.errAt(v, "workdir", "must be an absolute path like /forge/src, got %s", quote(s))
	case strings.IndexFunc(s, isControl) >= 0:
		p.errAt(v, "workdir", "must not contain control characters")
	case cleanPath(s) != s:
		p.errAt(v, "workdir", "%s is not a clean path; write %s", quote(s), quote(cleanPath(s)))
	case s == "/":
		p.errAt(v, "workdir", "must not be /: the source would be unpacked over the image")
	case underAny(s, reservedDirs):
		p.errAt(v, "workdir", "%s is reserved for the system or for Forge; choose another directory", quote(s))
	default:
		return s, true
	}
	return "", false
}

func (p *parser) artifacts(v *yaml.Node) []string {
	items, ok := p.stringList(v, "artifacts", "paths")
	var out []string
	for _, it := range items {
		s := it.Value
		switch {
		case strings.TrimSpace(s) == "":
			p.errAt(it, "artifacts", "empty path")
		case strings.IndexFunc(s, isControl) >= 0:
			p.errAt(it, "artifacts", "%s contains control characters", quote(s))
		case strings.HasPrefix(s, "/"):
			p.errAt(it, "artifacts", "%s is absolute; artifacts are paths relative to the work directory", quote(s))
		case hasDotDot(s):
			p.errAt(it, "artifacts", "%s leaves the work directory (..)", quote(s))
		case !validGlob(s):
			p.errAt(it, "artifacts", "%s is not a valid glob", quote(s))
		default:
			out = append(out, s)
			continue
		}
		ok = false
	}
	if !ok {
		return nil
	}
	return out
}

func (p *parser) constraints(v *yaml.Node) []string {
	items, ok := p.stringList(v, "constraints", "placement constraints")
	var out []string
	for _, it := range items {
		if msg := checkConstraint(it.Value); msg != "" {
			p.errAt(it, "constraints", "%s", msg)
			ok = false
			continue
		}
		out = append(out, it.Value)
	}
	if !ok {
		return nil
	}
	return out
}

func (p *parser) resources(v *yaml.Node) Resources {
	var r Resources
	if isNull(v) {
		return r
	}
	if v.Kind != yaml.MappingNode {
		p.errAt(v, "resources", "must be a mapping like {cpus: 2, memory: 4GiB}, got %s", describe(v))
		return r
	}
	for _, e := range p.entries(v, "resources") {
		val := resolve(e.v)
		path := "resources." + e.key
		switch e.key {
		case "cpus":
			n, msg := parseCPUs(val)
			if msg != "" {
				p.errAt(val, path, "%s", msg)
				continue
			}
			r.NanoCPUs = n
		case "memory":
			n, msg := parseMemory(val)
			if msg != "" {
				p.errAt(val, path, "%s", msg)
				continue
			}
			r.MemoryBytes = n
		default:
			p.errAt(e.k, "resources", "unknown key %s (use cpus and memory)", quote(e.key))
		}
	}
	return r
}

func (p *parser) ports(v *yaml.Node) []Port {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.errAt(v, "ports", `must be a list of ports like "8000:8000", got %s`, describe(v))
		return nil
	}
	var out []Port
	ok := true
	first := map[string]int{} // "8000/tcp" -> line
	for _, item := range v.Content {
		it := resolve(item)
		port, msg := parsePort(it)
		if msg != "" {
			p.errAt(it, "ports", "%s", msg)
			ok = false
			continue
		}
		id := fmt.Sprintf("%d/%s", port.Published, port.Protocol)
		if line, dup := first[id]; dup {
			p.errAt(it, "ports", "port %s is published twice (first at line %d)", id, line)
			ok = false
			continue
		}
		first[id] = it.Line
		out = append(out, port)
	}
	if !ok {
		return nil
	}
	return out
}

// str reads a scalar that must be a YAML string. Numbers, booleans and
// dates are refused rather than turned into text: `image: 3.10` would
// otherwise silently become "3.1".
func (p *parser) str(v *yaml.Node, key string) (string, bool) {
	switch {
	case isNull(v):
		p.errAt(v, key, "must not be empty")
	case v.Kind != yaml.ScalarNode:
		p.errAt(v, key, "must be a string, got %s", describe(v))
	case v.ShortTag() != "!!str":
		p.errAt(v, key, "must be a string, got %s; quote it: %s", describe(v), strconv.Quote(v.Value))
	case strings.ContainsRune(v.Value, 0):
		p.errAt(v, key, "must not contain a NUL character")
	default:
		return v.Value, true
	}
	return "", false
}

// stringList reads a list whose items must be strings, returning the nodes
// (resolved) of the items that are, so the caller can check those too. A
// missing or empty list is fine. ok is false when a problem was recorded.
func (p *parser) stringList(v *yaml.Node, key, what string) (items []*yaml.Node, ok bool) {
	if isNull(v) {
		return nil, true
	}
	if v.Kind != yaml.SequenceNode {
		p.errAt(v, key, "must be a list of %s, got %s", what, describe(v))
		return nil, false
	}
	ok = true
	for _, item := range v.Content {
		it := resolve(item)
		if _, good := p.str(it, key); !good {
			ok = false
			continue
		}
		items = append(items, it)
	}
	return items, ok
}

// resolve follows an alias to the value it names. The result carries the
// alias's position, so that a value of the wrong type is reported where it
// is used (`execute: *image` is wrong on that line, not on the anchor's);
// the values inside keep their own positions.
func resolve(n *yaml.Node) *yaml.Node {
	if n == nil || n.Kind != yaml.AliasNode {
		return n
	}
	target := n.Alias
	// yaml.v3 points an alias at the anchored node, never at another
	// alias; the bound is only a guard.
	for i := 0; i < 8 && target != nil && target.Kind == yaml.AliasNode; i++ {
		target = target.Alias
	}
	if target == nil || target.Kind == yaml.AliasNode {
		// Cannot happen with a successful parse; a null keeps callers
		// free of nil checks.
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
	}
	at := *target
	at.Line, at.Column = n.Line, n.Column
	return &at
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names a value's type for messages.
func describe(n *yaml.Node) string {
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case "!!str":
			return "a string"
		case "!!int", "!!float":
			return "the number " + shortValue(n.Value)
		case "!!bool":
			return "the boolean " + shortValue(n.Value)
		case "!!null":
			return "an empty value"
		case "!!timestamp":
			return "the date " + shortValue(n.Value)
		case "!!binary":
			return "binary data"
		default:
			return "a value tagged " + shortValue(tag)
		}
	}
	return "an unexpected YAML value"
}

// shortValue shows a short, plain value as written (42, true) and quotes
// anything else, so a message stays on one line.
func shortValue(s string) string {
	if s == "" || len(s) > 40 || strings.IndexFunc(s, isSpaceOrControl) >= 0 || strings.ContainsRune(s, '"') {
		return quote(s)
	}
	return s
}
