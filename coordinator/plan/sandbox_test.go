package plan

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestSandboxRefusals tries every key a config may not have, and checks
// the error names the key, says why, and that no spec comes back.
func TestSandboxRefusals(t *testing.T) {
	timeout := func(d string) string { return strings.Replace(baseYAML, "timeout: 30m", "timeout: "+d, 1) }
	untrusted := Options{Untrusted: true, AllowPorts: true}
	for _, tc := range []struct {
		name string
		yml  string
		opt  Options
		want []string
	}{
		{"memory above max", baseYAML + "resources: {memory: 64GiB}\n", Options{},
			[]string{"resources.memory: 64GiB is above this coordinator's maximum of 8GiB"}},
		{"cpus above max", baseYAML + "resources: {cpus: 16}\n", Options{},
			[]string{"resources.cpus: 16 is above this coordinator's maximum of 4"}},
		{"timeout above max", timeout("24h"), Options{},
			[]string{"timeout: 24h is above this coordinator's maximum of 6h"}},
		{"operator's own max", baseYAML + "resources: {memory: 3GiB, cpus: 1.5}\n",
			Options{Sandbox: Sandbox{Memory: 1 << 30, MaxMemory: 2 << 30, NanoCPUs: 1e9, MaxNanoCPUs: 1e9}},
			[]string{"resources.memory: 3GiB is above this coordinator's maximum of 2GiB", "resources.cpus: 1.5 is above this coordinator's maximum of 1"}},
		{"ports without --allow-ports", baseYAML + "ports: [8000]\n", Options{},
			[]string{"ports: this coordinator does not let builds publish ports (start it with --allow-ports)"}},
		{"manager placement with workers", baseYAML + "constraints: [\"node.role == manager\"]\n", Options{HasWorkers: true},
			[]string{`constraints: "node.role == manager": builds stay off manager nodes`, "--builds-on-managers"}},
		{"not-worker placement with workers", baseYAML + "constraints: [\"node.role!=worker\"]\n", Options{HasWorkers: true},
			[]string{`constraints: "node.role!=worker"`}},

		{"untrusted ports", baseYAML + "ports: [8000]\n", untrusted,
			[]string{"ports: this build is untrusted (a pull request from a fork or a first-time contributor): it cannot publish ports, even with --allow-ports"}},
		{"untrusted constraints", baseYAML + "constraints: [\"node.role==manager\"]\n", untrusted,
			[]string{"constraints: this build is untrusted", "cannot choose its placement"}},
		{"untrusted harmless constraint", baseYAML + "constraints: [\"node.labels.ci==true\"]\n", untrusted,
			[]string{"constraints: this build is untrusted"}},
		{"untrusted memory", baseYAML + "resources: {memory: 5GiB}\n", untrusted,
			[]string{"resources.memory: 5GiB is above the default of 4GiB, and this build is untrusted"}},
		{"untrusted cpus", baseYAML + "resources: {cpus: 2.5}\n", untrusted,
			[]string{"resources.cpus: 2.5 is above the default of 2, and this build is untrusted"}},
		{"untrusted timeout", timeout("90m"), untrusted,
			[]string{"timeout: 1h30m is above the default of 1h, and this build is untrusted"}},
		{"untrusted all at once", timeout("24h") + "resources: {memory: 64GiB, cpus: 8}\nports: [80]\nconstraints: [\"node.role==manager\"]\n", untrusted,
			[]string{"resources.memory:", "resources.cpus:", "timeout:", "ports:", "constraints:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ServiceSpec(prBuild(), parse(t, tc.yml), tc.opt)
			if err == nil {
				t.Fatalf("accepted: %+v", spec.TaskTemplate)
			}
			if !errors.Is(err, ErrRefused) {
				t.Errorf("error %q is not ErrRefused", err)
			}
			if spec.TaskTemplate.ContainerSpec != nil || spec.Name != "" {
				t.Errorf("a spec came back with the error: %+v", spec)
			}
			for _, w := range append(tc.want, prBuild().ID) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
			var rs Refusals
			if !errors.As(err, &rs) || len(rs) == 0 || rs[0].Key == "" {
				t.Errorf("error %q carries no refusal keys", err)
			}
		})
	}
}

// TestSandboxAllows checks what stays allowed: a trusted build up to the
// maximum, an untrusted one at or below the defaults, placement choices
// when no worker exists or the build is pinned.
func TestSandboxAllows(t *testing.T) {
	for _, tc := range []struct {
		name string
		yml  string
		opt  Options
	}{
		{"trusted at max", strings.Replace(baseYAML, "timeout: 30m", "timeout: 6h", 1) + "resources: {memory: 8GiB, cpus: 4}\n", Options{}},
		{"untrusted at defaults", strings.Replace(baseYAML, "timeout: 30m", "timeout: 1h", 1) + "resources: {memory: 4GiB, cpus: 2}\n", Options{Untrusted: true}},
		{"untrusted below defaults", baseYAML + "resources: {memory: 512MiB, cpus: 0.5}\n", Options{Untrusted: true}},
		{"untrusted without timeout", strings.Replace(baseYAML, "timeout: 30m", "", 1), Options{Untrusted: true}},
		{"manager constraint, no workers", baseYAML + "constraints: [\"node.role==manager\"]\n", Options{}},
		{"manager constraint, pinned", baseYAML + "constraints: [\"node.role==manager\"]\n", Options{HasWorkers: true, Node: "abc"}},
		{"manager constraint, builds on managers", baseYAML + "constraints: [\"node.role==manager\"]\n", Options{HasWorkers: true, Sandbox: Sandbox{BuildsOnManagers: true}}},
		{"raised default lifts the max", baseYAML + "resources: {memory: 12GiB}\n", Options{Sandbox: Sandbox{Memory: 12 << 30}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ServiceSpec(prBuild(), parse(t, tc.yml), tc.opt); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestPlacementOffManagers(t *testing.T) {
	cfg := parse(t, baseYAML)
	for _, tc := range []struct {
		name string
		opt  Options
		want []string
	}{
		{"no workers", Options{}, nil},
		{"workers", Options{HasWorkers: true}, []string{"node.role==worker"}},
		{"workers, builds on managers", Options{HasWorkers: true, Sandbox: Sandbox{BuildsOnManagers: true}}, nil},
		{"workers, forge run", Options{HasWorkers: true, Node: "abc"}, []string{"node.id==abc"}},
	} {
		spec, err := ServiceSpec(prBuild(), cfg, tc.opt)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		if p := spec.TaskTemplate.Placement; p != nil {
			got = p.Constraints
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: constraints %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestSandboxValidate(t *testing.T) {
	if err := DefaultSandbox().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Sandbox{}).Validate(); err != nil {
		t.Fatalf("zero sandbox: %v", err)
	}
	for _, tc := range []struct {
		s    Sandbox
		want string
	}{
		{Sandbox{Memory: 16 << 30, MaxMemory: 8 << 30}, "memory limit 16GiB is above the maximum of 8GiB"},
		{Sandbox{Memory: 1 << 20}, "6MiB"},
		{Sandbox{NanoCPUs: 3e9, MaxNanoCPUs: 2e9}, "CPU limit 3 is above the maximum of 2"},
		{Sandbox{Pids: -1}, "process limit"},
		{Sandbox{MaxTimeout: 30 * time.Minute}, "maximum timeout 30m is outside 1h to 24h"},
		{Sandbox{MaxTimeout: 48 * time.Hour}, "maximum timeout 48h"},
		{Sandbox{LogMaxSize: "lots"}, `log max-size "lots"`},
		{Sandbox{LogMaxFile: -1}, "max-file"},
	} {
		err := tc.s.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.s, err, tc.want)
		}
		if _, err := ServiceSpec(prBuild(), parse(t, baseYAML), Options{Sandbox: tc.s}); err == nil {
			t.Errorf("%+v: ServiceSpec accepted the sandbox", tc.s)
		}
	}
}
