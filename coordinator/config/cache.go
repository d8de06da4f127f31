package config

import (
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// Cache is the `cache:` of a .forge.yml: container paths kept between
// builds of the repository, and the key that picks which copy a build
// gets. Written either as a list of paths, or as a mapping:
//
//	cache:
//	  paths: [/root/.cache/go-build, node_modules]
//	  key: '{{ hashFiles "go.sum" }}'
type Cache struct {
	// Paths are clean: absolute, or relative to the work directory.
	Paths []string
	// Key is the key template as written; "" when none.
	Key string `json:",omitempty"`
	// KeyParts is Key parsed: literal text and the functions in {{ }}.
	KeyParts []KeyPart `json:",omitempty"`
}

// KeyPart is a piece of a cache key template: Text when Func is "",
// otherwise a call of Func ("branch", "hashFiles") with Args.
type KeyPart struct {
	Text string   `json:",omitempty"`
	Func string   `json:",omitempty"`
	Args []string `json:",omitempty"`
}

// Key template functions.
const (
	KeyBranch    = "branch"    // the build's branch (a pull request's head)
	KeyHashFiles = "hashFiles" // SHA-256 of the source files matching patterns
)

// Limits of cache:.
const (
	MaxCachePaths  = 32  // paths in cache.paths (wire.MaxCachePaths)
	MaxCacheKey    = 512 // bytes of the key template as written
	maxCachePath   = 4096
	maxKeyPatterns = 16
)

// ContainerPaths are the cache's paths in the container: relative ones
// under workdir. Clean and absolute.
func (c *Cache) ContainerPaths(workdir string) []string {
	out := make([]string, 0, len(c.Paths))
	for _, p := range c.Paths {
		if !path.IsAbs(p) {
			p = path.Join(workdir, p)
		}
		out = append(out, p)
	}
	return out
}

// HashesFiles reports whether the key uses hashFiles, which needs the
// source's files.
func (c *Cache) HashesFiles() bool {
	for _, p := range c.KeyParts {
		if p.Func == KeyHashFiles {
			return true
		}
	}
	return false
}

// ResolveKey renders the key for a build of branch; hash gives the
// hashFiles value of a list of patterns.
func (c *Cache) ResolveKey(branch string, hash func(patterns []string) (string, error)) (string, error) {
	var b strings.Builder
	for _, p := range c.KeyParts {
		switch p.Func {
		case "":
			b.WriteString(p.Text)
		case KeyBranch:
			b.WriteString(branch)
		case KeyHashFiles:
			h, err := hash(p.Args)
			if err != nil {
				return "", fmt.Errorf("cache key: hashFiles: %w", err)
			}
			b.WriteString(h)
		default:
			return "", fmt.Errorf("cache key: unknown function %q", p.Func)
		}
	}
	return b.String(), nil
}

// MatchFiles reports whether the slash-separated relative file name
// matches pattern: path.Match per element, and a "**" element matching
// any number of elements (none included).
func MatchFiles(pattern, name string) bool {
	return matchParts(strings.Split(pattern, "/"), strings.Split(name, "/"))
}

func matchParts(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchParts(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, err := path.Match(pat[0], name[0]); err != nil || !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

// cache reads cache: (a list of paths, or a mapping of paths and key),
// and gives the paths' nodes for checkCache.
func (p *parser) cache(v *yaml.Node) (*Cache, []*yaml.Node) {
	if isNull(v) {
		return nil, nil
	}
	c := &Cache{}
	var pathsNode *yaml.Node
	switch v.Kind {
	case yaml.SequenceNode:
		pathsNode = v
	case yaml.MappingNode:
		for _, e := range p.entries(v, "cache") {
			val := resolve(e.v)
			switch e.key {
			case "paths":
				pathsNode = val
			case "key":
				c.Key, c.KeyParts = p.cacheKey(val)
			default:
				p.errAt(e.k, "cache", "unknown key %s (use paths and key)", quote(e.key))
			}
		}
		if pathsNode == nil {
			p.errAt(v, "cache", "paths is required: the container paths to keep, like [/root/.cache/go-build]")
			return nil, nil
		}
	default:
		p.errAt(v, "cache", `must be a list of paths, or a mapping like {paths: [/root/.cache/go-build], key: '{{ hashFiles "go.sum" }}'}, got %s`, describe(v))
		return nil, nil
	}
	var nodes []*yaml.Node
	c.Paths, nodes = p.cachePaths(pathsNode)
	if c.Paths == nil {
		return nil, nil
	}
	return c, nodes
}

func (p *parser) cachePaths(v *yaml.Node) ([]string, []*yaml.Node) {
	items, ok := p.stringList(v, "cache.paths", "paths")
	if ok && len(items) == 0 {
		p.errAt(v, "cache.paths", "must list at least one path")
		return nil, nil
	}
	if len(items) > MaxCachePaths {
		p.errAt(v, "cache.paths", "%d paths; at most %d", len(items), MaxCachePaths)
		return nil, nil
	}
	var out []string
	first := map[string]int{}
	for _, it := range items {
		s := it.Value
		switch {
		case strings.TrimSpace(s) == "":
			p.errAt(it, "cache.paths", "empty path")
		case len(s) > maxCachePath:
			p.errAt(it, "cache.paths", "a path of %d bytes; at most %d", len(s), maxCachePath)
		case strings.IndexFunc(s, isControl) >= 0:
			p.errAt(it, "cache.paths", "%s contains control characters", quote(s))
		case hasDotDot(s):
			p.errAt(it, "cache.paths", "%s climbs out with ..; write the absolute path instead", quote(s))
		case cleanPath(s) == "/":
			p.errAt(it, "cache.paths", "/ cannot be a cache: it is the whole container")
		case cleanPath(s) != strings.TrimSuffix(s, "/") || strings.HasPrefix(s, "./"):
			p.errAt(it, "cache.paths", "%s is not a clean path; write %s", quote(s), quote(cleanPath(s)))
		case s == ".":
			p.errAt(it, "cache.paths", ". is the work directory, which holds the source; name the folders inside it to keep")
		case strings.HasPrefix(s, "/") && underAny(cleanPath(s), reservedDirs):
			p.errAt(it, "cache.paths", "%s is reserved for the system or for Forge", quote(s))
		default:
			c := cleanPath(s)
			if line, dup := first[c]; dup {
				p.errAt(it, "cache.paths", "%s is listed twice (first at line %d)", quote(s), line)
			} else {
				first[c] = it.Line
				out = append(out, c)
				continue
			}
		}
		ok = false
	}
	if !ok {
		return nil, nil
	}
	return out, items
}

// checkCache holds cache.paths against the work directory, once both are
// known: no path may hold the work directory (it would keep the source),
// and no path may lie inside another (its files would be kept twice).
func (p *parser) checkCache(nodes []*yaml.Node, c *Cache, workdir string) {
	if c == nil {
		return
	}
	abs := c.ContainerPaths(workdir)
	order := make([]int, len(abs))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(i, j int) bool { return abs[order[i]] < abs[order[j]] })
	for _, i := range order {
		if workdir == abs[i] || strings.HasPrefix(workdir, abs[i]+"/") {
			p.errAt(nodes[i], "cache.paths", "%s holds the work directory %s, which holds the source; name the folders to keep", quote(c.Paths[i]), workdir)
			return
		}
	}
	for k := 1; k < len(order); k++ {
		outer, inner := abs[order[k-1]], abs[order[k]]
		if strings.HasPrefix(inner, outer+"/") {
			p.errAt(nodes[order[k]], "cache.paths", "%s is inside %s, which is kept already", quote(inner), quote(outer))
			return
		}
	}
}

// cacheKey parses a key template: text with {{ branch }} and
// {{ hashFiles "pattern" ... }} in it.
func (p *parser) cacheKey(v *yaml.Node) (string, []KeyPart) {
	s, ok := p.str(v, "cache.key")
	if !ok {
		return "", nil
	}
	if len(s) > MaxCacheKey {
		p.errAt(v, "cache.key", "%d bytes; at most %d", len(s), MaxCacheKey)
		return "", nil
	}
	parts, msg := ParseKey(s)
	if msg != "" {
		p.errAt(v, "cache.key", "%s", msg)
		return "", nil
	}
	return s, parts
}

// ParseKey parses a cache key template; msg says what is wrong.
func ParseKey(s string) (parts []KeyPart, msg string) {
	if strings.TrimSpace(s) == "" {
		return nil, "must not be empty; leave key out for one cache per branch"
	}
	if i := strings.IndexFunc(s, isControl); i >= 0 {
		return nil, "must not contain control characters"
	}
	rest := s
	for rest != "" {
		open := strings.Index(rest, "{{")
		if open < 0 {
			if strings.Contains(rest, "}}") {
				return nil, `"}}" without "{{"`
			}
			parts = append(parts, KeyPart{Text: rest})
			break
		}
		if text := rest[:open]; text != "" {
			if strings.Contains(text, "}}") {
				return nil, `"}}" without "{{"`
			}
			parts = append(parts, KeyPart{Text: text})
		}
		end := strings.Index(rest[open:], "}}")
		if end < 0 {
			return nil, `"{{" without "}}"`
		}
		part, msg := parseKeyAction(rest[open+2 : open+end])
		if msg != "" {
			return nil, msg
		}
		parts = append(parts, part)
		rest = rest[open+end+2:]
	}
	return parts, ""
}

// parseKeyAction reads what is between {{ and }}.
func parseKeyAction(a string) (KeyPart, string) {
	words, msg := splitKeyWords(a)
	if msg != "" {
		return KeyPart{}, msg
	}
	if len(words) == 0 {
		return KeyPart{}, `empty {{ }}; use {{ branch }} or {{ hashFiles "go.sum" }}`
	}
	switch fn := words[0]; fn {
	case KeyBranch:
		if len(words) > 1 {
			return KeyPart{}, "branch takes no arguments"
		}
		return KeyPart{Func: KeyBranch}, ""
	case KeyHashFiles:
		args := words[1:]
		if len(args) == 0 {
			return KeyPart{}, `hashFiles needs at least one file pattern, like hashFiles "go.sum"`
		}
		if len(args) > maxKeyPatterns {
			return KeyPart{}, fmt.Sprintf("hashFiles takes at most %d patterns", maxKeyPatterns)
		}
		for _, pat := range args {
			switch {
			case pat == "":
				return KeyPart{}, "hashFiles: empty pattern"
			case strings.HasPrefix(pat, "/"):
				return KeyPart{}, fmt.Sprintf("hashFiles: %s is absolute; patterns are relative to the repository", quote(pat))
			case hasDotDot(pat):
				return KeyPart{}, fmt.Sprintf("hashFiles: %s leaves the repository (..)", quote(pat))
			case !validGlob(pat):
				return KeyPart{}, fmt.Sprintf("hashFiles: %s is not a valid pattern", quote(pat))
			}
		}
		return KeyPart{Func: KeyHashFiles, Args: args}, ""
	default:
		return KeyPart{}, fmt.Sprintf(`unknown function %s in {{ }}; use branch or hashFiles "file"`, quote(fn))
	}
}

// splitKeyWords splits an action into words: bare words, and strings in
// double quotes (Go's escapes) or back quotes, which are patterns.
func splitKeyWords(a string) ([]string, string) {
	var words []string
	for {
		a = strings.TrimLeftFunc(a, unicode.IsSpace)
		if a == "" {
			return words, ""
		}
		switch a[0] {
		case '"', '`':
			q, err := strconv.QuotedPrefix(a)
			if err != nil {
				return nil, fmt.Sprintf("unterminated or bad string in {{ %s }}", strings.TrimSpace(a))
			}
			u, _ := strconv.Unquote(q)
			words = append(words, u)
			a = a[len(q):]
			if a != "" && !unicode.IsSpace(rune(a[0])) {
				return nil, "put a space after each quoted pattern"
			}
		default:
			i := strings.IndexFunc(a, unicode.IsSpace)
			if i < 0 {
				i = len(a)
			}
			w := a[:i]
			if strings.ContainsAny(w, "\"`") {
				return nil, fmt.Sprintf("%s: quote patterns whole, like hashFiles \"go.sum\"", quote(w))
			}
			if len(words) > 0 && words[0] == KeyHashFiles {
				return nil, fmt.Sprintf("%s: quote patterns, like hashFiles \"%s\"", quote(w), w)
			}
			words = append(words, w)
			a = a[i:]
		}
	}
}
