package plan

import (
	"bytes"
	"encoding/json"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/forgexec"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var created = time.Date(2024, 5, 17, 9, 30, 15, 0, time.FixedZone("CEST", 2*3600))

func parse(t *testing.T, yml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("differs from %s (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
}

func prBuild() Build {
	return Build{
		ID:          "b-01HXAMPLE7PR",
		Owner:       "Forge-CI",
		Repo:        "forge",
		PullRequest: 42,
		Branch:      "fix/flaky-test",
		SHA:         "0123456789abcdef0123456789abcdef01234567",
		Ref:         "refs/pull/42/head",
		Action:      "execute",
		CommitCount: 3,
		Fork:        true,
		Created:     created,
	}
}

func pushBuild() Build {
	return Build{
		ID:          "b-01HXAMPLEPUSH",
		Owner:       "forge-ci",
		Repo:        "forge",
		Branch:      "main",
		SHA:         "89abcdef0123456789abcdef0123456789abcdef",
		Ref:         "refs/heads/main",
		Action:      "deploy",
		CommitCount: 1,
		Created:     created,
	}
}

const baseYAML = `
image: golang:1.22
environment:
  GOFLAGS: -mod=mod
setup:
  - go mod download
execute:
  - go vet ./...
  - go test ./...
deploy:
  - ./scripts/release.sh
on:
  push:
    main: deploy
timeout: 30m
`

func TestServiceSpecGolden(t *testing.T) {
	long := pushBuild()
	long.Owner = "a-very-long-organisation-name"
	long.Repo = "with-a-long-repository-name"
	long.Branch = "feature/JIRA-12345_make-the-build-pipeline-faster-and-much-more-reliable"
	long.Ref = "refs/heads/" + long.Branch

	for _, tc := range []struct {
		name  string
		build Build
		yml   string
		opt   Options
	}{
		{"pr", prBuild(), baseYAML, Options{}},
		{"push-long-branch", long, baseYAML, Options{}},
		{"resources-constraints", prBuild(), baseYAML + `
resources: {cpus: 1.5, memory: 2GiB}
constraints: ["node.labels.ci==true", "node.role != manager"]
`, Options{}},
		{"ports-allowed", prBuild(), baseYAML + `
ports: [8080, "9000:90/udp"]
`, Options{AllowPorts: true}},
		{"node-pin", pushBuild(), baseYAML + `
constraints: ["node.labels.ci==true"]
`, Options{Node: "x8kz1d1z0t9qv2m4s6a7b3c5e", ExtraLabels: map[string]string{"forge.test": "run-1"}, HasWorkers: true}},
		// A trusted build asking for more than the defaults, up to the
		// operator's maximum, on a swarm with workers: kept off managers.
		{"sandbox-trusted", pushBuild(), strings.Replace(baseYAML, "timeout: 30m", "timeout: 3h", 1) + `
resources: {cpus: 4, memory: 8GiB}
constraints: ["node.labels.ci==true"]
ports: [8080]
`, Options{AllowPorts: true, HasWorkers: true}},
		// An approved untrusted build within the defaults, with an
		// operator's own sandbox.
		{"sandbox-untrusted", prBuild(), baseYAML + `
resources: {cpus: 1, memory: 3GiB}
`, Options{Untrusted: true, AllowPorts: true, HasWorkers: true, Sandbox: Sandbox{
			Memory: 3 << 30, NanoCPUs: 1e9, Pids: 512, MaxMemory: 16 << 30, MaxNanoCPUs: 8e9, MaxTimeout: 2 * time.Hour,
			LogMaxSize: "20m", LogMaxFile: 2}}},
		{"builds-on-managers", prBuild(), baseYAML + `
constraints: ["node.role==manager"]
`, Options{HasWorkers: true, Sandbox: Sandbox{BuildsOnManagers: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parse(t, tc.yml)
			spec, err := ServiceSpec(tc.build, cfg, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			checkSpecShape(t, spec)
			got, err := json.MarshalIndent(spec, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join("testdata", tc.name+".golden.json"), append(got, '\n'))

			exec, err := ExecutorSpec(tc.build, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join("testdata", tc.name+".build.json"), exec)
		})
	}
}

// checkSpecShape checks what every service must have whatever the config.
func checkSpecShape(t *testing.T, spec swarm.ServiceSpec) {
	t.Helper()
	cs := spec.TaskTemplate.ContainerSpec
	if cs == nil {
		t.Fatal("no container spec")
	}
	if !slices.Equal(cs.Command, []string{"/forgexec"}) || cs.Args != nil {
		t.Errorf("command %q args %q", cs.Command, cs.Args)
	}
	if !maps.Equal(spec.Labels, cs.Labels) {
		t.Errorf("service labels %v differ from container labels %v", spec.Labels, cs.Labels)
	}
	if !slices.IsSorted(cs.Env) {
		t.Errorf("env not sorted: %q", cs.Env)
	}
	rp := spec.TaskTemplate.RestartPolicy
	if rp == nil || rp.Condition != swarm.RestartPolicyConditionNone || rp.MaxAttempts == nil || *rp.MaxAttempts != 0 {
		t.Errorf("restart policy %+v", rp)
	}
	if m := spec.Mode.Replicated; m == nil || m.Replicas == nil || *m.Replicas != 1 || spec.Mode.Global != nil {
		t.Errorf("mode %+v", spec.Mode)
	}
	if len(spec.Name) > MaxNameLen || spec.Name == "" {
		t.Errorf("name %q", spec.Name)
	}
}

func TestExecutorSpecDecodes(t *testing.T) {
	cfg := parse(t, baseYAML)
	data, err := ExecutorSpec(pushBuild(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := forgexec.DecodeSpec(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the executor refuses the spec: %v\n%s", err, data)
	}
	want := &forgexec.Spec{
		Version:  1,
		BuildID:  "b-01HXAMPLEPUSH",
		Action:   "deploy",
		Setup:    []string{"go mod download"},
		Commands: []string{"./scripts/release.sh"},
		Workdir:  "/forge/src",
		Timeout:  forgexec.Duration(30 * time.Minute),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestExecutorSpecDefaultsForHandMadeConfig(t *testing.T) {
	cfg := &config.Config{Image: "busybox", Actions: map[string][]string{"execute": {"true"}}}
	data, err := ExecutorSpec(prBuild(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := forgexec.DecodeSpec(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if s.Workdir != config.DefaultWorkdir || time.Duration(s.Timeout) != config.DefaultTimeout {
		t.Errorf("defaults not applied: %+v", s)
	}
}

func TestPortsRefusedWithoutAllowPorts(t *testing.T) {
	cfg := parse(t, baseYAML+"ports: [\"8000:8000\"]\n")
	_, err := ServiceSpec(prBuild(), cfg, Options{})
	if err == nil {
		t.Fatal("ports were published without --allow-ports")
	}
	for _, want := range []string{"ports", "--allow-ports", "b-01HXAMPLE7PR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestUnknownActionRefused(t *testing.T) {
	cfg := parse(t, baseYAML)
	for _, action := range []string{"nope", "setup", ""} {
		b := prBuild()
		b.Action = action
		if _, err := ServiceSpec(b, cfg, Options{}); err == nil {
			t.Errorf("ServiceSpec accepted action %q", action)
		}
		if _, err := ExecutorSpec(b, cfg); err == nil {
			t.Errorf("ExecutorSpec accepted action %q", action)
		} else if action == "nope" && !strings.Contains(err.Error(), `action "nope" is not defined`) {
			t.Errorf("error does not name the action: %v", err)
		}
	}
}

func TestBadInputsRefused(t *testing.T) {
	cfg := parse(t, baseYAML)
	for name, mod := range map[string]func(*Build, *config.Config, *Options){
		"no id":          func(b *Build, _ *config.Config, _ *Options) { b.ID = "" },
		"no owner":       func(b *Build, _ *config.Config, _ *Options) { b.Owner = "" },
		"no sha":         func(b *Build, _ *config.Config, _ *Options) { b.SHA = "" },
		"negative pr":    func(b *Build, _ *config.Config, _ *Options) { b.PullRequest = -1 },
		"no image":       func(_ *Build, c *config.Config, _ *Options) { c.Image = "" },
		"reserved env":   func(_ *Build, c *config.Config, _ *Options) { c.Environment = map[string]string{"FORGE_SHA": "x"} },
		"reserved CI":    func(_ *Build, c *config.Config, _ *Options) { c.Environment = map[string]string{"CI": "false"} },
		"bad env name":   func(_ *Build, c *config.Config, _ *Options) { c.Environment = map[string]string{"A=B": "x"} },
		"node injection": func(_ *Build, _ *config.Config, o *Options) { o.Node = "abc,node.role==manager" },
		"label override": func(_ *Build, _ *config.Config, o *Options) { o.ExtraLabels = map[string]string{LabelBuild: "other"} },
		"bad name":       func(_ *Build, _ *config.Config, o *Options) { o.Name = "Forge_Build" },
		"long name":      func(_ *Build, _ *config.Config, o *Options) { o.Name = strings.Repeat("a", 64) },
	} {
		b, c, o := prBuild(), *cfg, Options{}
		mod(&b, &c, &o)
		if _, err := ServiceSpec(b, &c, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ServiceSpec(prBuild(), nil, Options{}); err == nil {
		t.Error("nil config accepted")
	}
	if _, err := ExecutorSpec(prBuild(), nil); err == nil {
		t.Error("nil config accepted by ExecutorSpec")
	}
}

// TestNothingSecretReachesTheContainer pins down exactly what a build
// container receives, so that adding a token, a certificate or the
// coordinator's address to it has to change this test.
func TestNothingSecretReachesTheContainer(t *testing.T) {
	cfg := parse(t, baseYAML+`
resources: {cpus: 1, memory: 1GiB}
constraints: ["node.labels.ci==true"]
ports: ["8000"]
`)
	for _, b := range []Build{prBuild(), pushBuild()} {
		spec, err := ServiceSpec(b, cfg, Options{AllowPorts: true, Node: "abc123"})
		if err != nil {
			t.Fatal(err)
		}
		cs := spec.TaskTemplate.ContainerSpec

		var keys []string
		for _, kv := range cs.Env {
			k, _, _ := strings.Cut(kv, "=")
			keys = append(keys, k)
		}
		want := []string{"CI", "FORGE_ACTION", "FORGE_BUILD_ID", "FORGE_COMMIT_COUNT", "FORGE_OWNER", "FORGE_REF", "FORGE_REPO", "FORGE_SHA", "GOFLAGS"}
		if b.PullRequest > 0 {
			want = append(want, "FORGE_PULL_REQUEST")
			slices.Sort(want)
		}
		if !slices.Equal(keys, want) {
			t.Errorf("env keys %q, want exactly %q", keys, want)
		}
		if !slices.Contains(cs.Env, "CI=true") {
			t.Errorf("env lacks CI=true: %q", cs.Env)
		}

		wantLabels := []string{LabelAction, LabelBuild, LabelRepo, LabelSHA}
		if b.PullRequest > 0 {
			wantLabels = append(wantLabels, LabelPullRequest)
			slices.Sort(wantLabels)
		}
		if got := slices.Sorted(maps.Keys(cs.Labels)); !slices.Equal(got, wantLabels) {
			t.Errorf("labels %q, want exactly %q", got, wantLabels)
		}

		// Nothing that could carry a credential or reach the host.
		if cs.Mounts != nil || cs.Secrets != nil || cs.Configs != nil || cs.Privileges != nil ||
			cs.CapabilityAdd != nil || cs.Hosts != nil || cs.User != "" || spec.TaskTemplate.Networks != nil {
			t.Errorf("container spec has more than planned: %+v", cs)
		}
		all, _ := json.Marshal(spec)
		for _, bad := range []string{"token", "ghs_", "ghp_", "BEGIN", "PRIVATE", "password", "secret", "docker.sock", "7443", "https://"} {
			if bytes.Contains(bytes.ToLower(all), bytes.ToLower([]byte(bad))) {
				t.Errorf("spec contains %q: %s", bad, all)
			}
		}
	}
}

func TestPushHasNoPullRequest(t *testing.T) {
	spec, err := ServiceSpec(pushBuild(), parse(t, baseYAML), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := spec.Labels[LabelPullRequest]; ok {
		t.Error("push has a pull request label")
	}
	for _, kv := range spec.TaskTemplate.ContainerSpec.Env {
		if strings.HasPrefix(kv, EnvPullRequest+"=") {
			t.Error("push has FORGE_PULL_REQUEST")
		}
	}
}

func TestDefaultSandboxNoPlacementNoPorts(t *testing.T) {
	spec, err := ServiceSpec(prBuild(), parse(t, baseYAML), Options{AllowPorts: true})
	if err != nil {
		t.Fatal(err)
	}
	r := spec.TaskTemplate.Resources
	want := swarm.Limit{NanoCPUs: 2e9, MemoryBytes: 4 << 30, Pids: 4096}
	if r == nil || r.Limits == nil || *r.Limits != want || r.Reservations != nil {
		t.Errorf("resources %+v, want limits %+v and no reservation", r, want)
	}
	if spec.TaskTemplate.Placement != nil || spec.EndpointSpec != nil {
		t.Errorf("unexpected placement or endpoint: %+v", spec)
	}
	if cs := spec.TaskTemplate.ContainerSpec; !slices.Equal(cs.CapabilityDrop, []string{"CAP_NET_RAW"}) || cs.CapabilityAdd != nil {
		t.Errorf("capabilities drop %q add %q", cs.CapabilityDrop, cs.CapabilityAdd)
	}
	ld := spec.TaskTemplate.LogDriver
	if ld == nil || ld.Name != "json-file" || !maps.Equal(ld.Options, map[string]string{"max-size": "10m", "max-file": "3"}) {
		t.Errorf("log driver %+v", ld)
	}
}

func TestOnlyMemory(t *testing.T) {
	spec, err := ServiceSpec(prBuild(), parse(t, baseYAML+"resources: {memory: 1g}\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := spec.TaskTemplate.Resources
	if r == nil || *r.Limits != (swarm.Limit{MemoryBytes: 1 << 30, NanoCPUs: 2e9, Pids: 4096}) || r.Reservations.MemoryBytes != 1<<30 || r.Reservations.NanoCPUs != 0 {
		t.Errorf("resources %+v", r)
	}
}

func TestSpecIsDeterministicAndDoesNotAlias(t *testing.T) {
	cfg := parse(t, strings.Replace(baseYAML, "GOFLAGS: -mod=mod", "{B: 2, A: 1, Z: z}", 1)+"constraints: [\"node.labels.ci==true\"]\n")
	opt := Options{Node: "abc", ExtraLabels: map[string]string{"x": "1", "y": "2"}}
	a, err := ServiceSpec(prBuild(), cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ServiceSpec(prBuild(), cfg, opt)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Error("two plans of the same build differ")
	}
	// Appending the node pin must not write into the config's slice.
	if len(cfg.Constraints) != 1 {
		t.Errorf("config constraints changed: %q", cfg.Constraints)
	}
	a.Labels["x"] = "changed"
	if a.TaskTemplate.ContainerSpec.Labels["x"] != "1" {
		t.Error("service and container share one label map")
	}
}

func TestNameOption(t *testing.T) {
	spec, err := ServiceSpec(prBuild(), parse(t, baseYAML), Options{Name: "forge-given-2"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != "forge-given-2" {
		t.Errorf("name %q", spec.Name)
	}
	spec, _ = ServiceSpec(prBuild(), parse(t, baseYAML), Options{})
	if spec.Name != ServiceName(prBuild(), nil) {
		t.Errorf("default name %q", spec.Name)
	}
}
