package config

import (
	"regexp"

	"gopkg.in/yaml.v3"
)

var secretNameRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)

// maxSecretName is the longest secret name (wire.MaxSecretName).
const maxSecretName = 128

// secrets reads `secrets:`: a list of names every action gets, or a
// mapping of declared action to such a list. Names must not also be in
// env, which holds the file's environment.
func (p *parser) secrets(v *yaml.Node, declared map[string]bool, env map[string]string) ([]string, map[string][]string) {
	v = resolve(v)
	switch {
	case isNull(v):
		return nil, nil
	case v.Kind == yaml.SequenceNode:
		return p.secretNames(v, "secrets", env), nil
	case v.Kind != yaml.MappingNode:
		p.errAt(v, "secrets", "must be a list of secret names like [DEPLOY_TOKEN], or a mapping of action to such a list, got %s", describe(v))
		return nil, nil
	}
	out := map[string][]string{}
	for _, e := range p.entries(v, "secrets") {
		if !declared[e.key] {
			p.errAt(e.k, "secrets", "action %s is not defined (secrets: maps an action to the secrets it gets)", quote(e.key))
			continue
		}
		key := "secrets." + e.key
		list := resolve(e.v)
		if !isNull(list) && list.Kind != yaml.SequenceNode {
			p.errAt(list, key, "must be a list of secret names like [DEPLOY_TOKEN], got %s", describe(list))
			continue
		}
		if names := p.secretNames(list, key, env); len(names) > 0 {
			out[e.key] = names
		}
	}
	return nil, out
}

// secretNames reads one list of secret names.
func (p *parser) secretNames(v *yaml.Node, key string, env map[string]string) []string {
	items, _ := p.stringList(v, key, "secret names")
	seen := map[string]int{}
	var out []string
	for _, it := range items {
		name := it.Value
		switch {
		case !secretNameRE.MatchString(name):
			p.errAt(it, key, "invalid secret name %s: use upper-case letters, digits and _, not starting with a digit", quote(name))
		case len(name) > maxSecretName:
			p.errAt(it, key, "secret name %s is longer than %d characters", shortValue(name), maxSecretName)
		case ReservedVar(name):
			p.errAt(it, key, "%s is reserved: Forge sets CI and FORGE_* itself", name)
		case seen[name] != 0:
			p.errAt(it, key, "secret %s is listed twice (first at line %d)", name, seen[name])
		default:
			if _, clash := env[name]; clash {
				p.errAt(it, key, "%s is also in environment: a variable comes from one or the other", name)
				continue
			}
			seen[name] = it.Line
			out = append(out, name)
		}
	}
	return out
}
