package lifecycle

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/wire"
)

// buildSecrets are the secrets a build gets, or those withheld from it.
type buildSecrets struct {
	values   map[string][]byte
	withheld []string // named in .forge.yml, kept from an untrusted build
}

// secretsOf opens the secrets b's action names in its .forge.yml. An
// untrusted build gets none: they are withheld, and its log says which
// (giveSecrets). For a trusted build, a secret that is not set, or no
// secrets key at all, is an error naming it.
func (r *Runner) secretsOf(ctx context.Context, b *coordinator.Build, req coordinator.Request) (buildSecrets, error) {
	names := req.Config.SecretsFor(b.Action)
	switch {
	case len(names) == 0:
		return buildSecrets{}, nil
	case b.Untrusted:
		return buildSecrets{withheld: names}, nil
	case r.cfg.Secrets == nil:
		return buildSecrets{}, fmt.Errorf("the build needs secrets (%s), but %w", strings.Join(names, ", "), coordinator.ErrNoSecretsKey)
	case len(names) > wire.MaxSecrets:
		return buildSecrets{}, fmt.Errorf("the build names %d secrets, max %d", len(names), wire.MaxSecrets)
	}
	values, err := r.cfg.Secrets.Values(ctx, b.Owner, b.Repo, names)
	if err != nil {
		return buildSecrets{}, err
	}
	total := 0
	for name, v := range values {
		total += len(name) + len(v)
	}
	if total > wire.MaxSecretsTotal {
		return buildSecrets{}, fmt.Errorf("the build's secrets (%s) hold %d KiB, max %d KiB", strings.Join(names, ", "), total>>10, wire.MaxSecretsTotal>>10)
	}
	return buildSecrets{values: values}, nil
}

// giveSecrets prepares b's log for its launch: its secrets' values are
// masked from its first byte of output on, and the secrets withheld from
// an untrusted build are named.
func (r *Runner) giveSecrets(b *coordinator.Build, sec buildSecrets) error {
	if len(sec.withheld) > 0 {
		line := fmt.Sprintf("secrets withheld from this untrusted build (a fork's or an outside contributor's pull request): %s\n",
			strings.Join(sec.withheld, ", "))
		if err := r.cfg.Logs.Note(b.ID, line); err != nil {
			return fmt.Errorf("log the secrets withheld: %w", err)
		}
	}
	if len(sec.values) > 0 {
		values := make([][]byte, 0, len(sec.values))
		for _, name := range slices.Sorted(maps.Keys(sec.values)) {
			values = append(values, sec.values[name])
		}
		r.cfg.Logs.Mask(b.ID, values)
	}
	return nil
}

// remask has the log of a build an earlier coordinator started masked
// again, after a restart: its secrets opened anew from cfg, its recorded
// .forge.yml (nil when that does not parse). A build whose secrets cannot
// be opened (no key any more, one deleted meanwhile) is an error: its
// output could not be masked.
func (r *Runner) remask(ctx context.Context, b *coordinator.Build, cfg *config.Config) error {
	if cfg == nil {
		return nil
	}
	sec, err := r.secretsOf(ctx, b, coordinator.Request{Config: cfg})
	if err != nil {
		return fmt.Errorf("the coordinator restarted and cannot mask the build's secrets in its log: %w", err)
	}
	if len(sec.values) > 0 {
		return r.giveSecrets(b, buildSecrets{values: sec.values})
	}
	return nil
}
