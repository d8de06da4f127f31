package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/internal/syncbuf"
)

// downRig is a deployed stack on a fake swarm, with its coordinator,
// which wants the admin token make up left in the state folder.
type downRig struct {
	sw       *fakeSwarm
	co       *fakeCoordinator
	state    string
	out, err *syncbuf.Buffer
	config   DownConfig
}

func newDownRig(t *testing.T) *downRig {
	r := &downRig{sw: newFakeSwarm(t), co: &fakeCoordinator{}, state: filepath.Join(t.TempDir(), "state"),
		out: &syncbuf.Buffer{}, err: &syncbuf.Buffer{}}
	r.sw.services = map[string]string{"forge_coordinator": "d1", "forge_agent": "d2"}
	r.sw.network, r.sw.volume = true, true
	r.sw.secrets["forge_ca_1"] = swarm.Secret{ID: "s1", Spec: swarm.SecretSpec{Annotations: swarm.Annotations{
		Name: "forge_ca_1", Labels: map[string]string{"forge.stack": "forge"}}}}
	if err := os.MkdirAll(filepath.Join(r.state, "certs"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The coordinator's copy of the token (its Docker secret), and make up's.
	r.co.tokenFile = filepath.Join(t.TempDir(), "admin-token")
	for _, f := range []string{r.co.tokenFile, filepath.Join(r.state, "admin-token")} {
		if err := os.WriteFile(f, []byte("forge_admin_0123\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The port comes from forge.env, where make up saved it.
	port := r.co.start(t)
	if err := os.WriteFile(filepath.Join(r.state, envFile), Settings{HTTPPort: port}.envFileText(), 0o644); err != nil {
		t.Fatal(err)
	}
	r.config = DownConfig{Config: Config{StateDir: r.state, Timeout: 5 * time.Second, Out: r.out, Err: r.err,
		Engine: r.sw.engine(), Interval: 5 * time.Millisecond}, statusGrace: time.Millisecond}
	return r
}

// TestDownPurge: the running build is seen and cancelled with the admin
// token, the stack removed as docker stack rm does, then the secrets, the
// volume and the state folder.
func TestDownPurge(t *testing.T) {
	r := newDownRig(t)
	r.co.running = []string{"b7"}
	r.config.Purge = true
	if err := Down(context.Background(), r.config); err != nil {
		t.Fatalf("Down: %v\n%s%s", err, r.out, r.err)
	}
	want := "make down: cancelling 1 build(s) still queued or running\n" +
		"make down: Removing service forge_agent\n" +
		"make down: Removing service forge_coordinator\n" +
		"make down: Removing network forge_forge\n" +
		"make down: waiting (at most 5s) for the stack's containers and network to be gone\n" +
		"make down: stack forge removed\n" +
		"make down: removed the secret forge_ca_1\n" +
		"make down: removed the volume forge_data (the coordinator's database and logs)\n" +
		"make down: removed " + r.state + " (CA, certificates, join token, webhook secret, admin token, session key, secrets key, settings)\n"
	if got := r.out.String(); got != want {
		t.Errorf("said:\n%s\nwant:\n%s", got, want)
	}
	if !slices.Equal(r.co.cancelled, []string{"b7"}) {
		t.Errorf("cancelled %q", r.co.cancelled)
	}
	if len(r.sw.services) > 0 || r.sw.network || r.sw.volume || len(r.sw.secrets) > 0 {
		t.Errorf("left: services %v, network %v, volume %v, secrets %v", r.sw.services, r.sw.network, r.sw.volume, r.sw.secrets)
	}
	if _, err := os.Stat(r.state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the state folder is still there: %v", err)
	}
	if r.err.String() != "" {
		t.Errorf("stderr:\n%s", r.err)
	}
}

// TestDownKeeps: without PURGE, running builds are left to the next make
// up, and the secrets, volume and state stay.
func TestDownKeeps(t *testing.T) {
	r := newDownRig(t)
	r.co.running = []string{"b7", "b8"}
	if err := Down(context.Background(), r.config); err != nil {
		t.Fatalf("Down: %v\n%s%s", err, r.out, r.err)
	}
	wantLines(t, r.out.String(),
		"make down: 2 build(s) still queued or running: their services stay, and the next make up finishes them\n",
		"make down: stack forge removed\n",
		"make down: kept: the Docker secrets, the data volume forge_data and "+r.state+" (make down PURGE=1 removes them)\n")
	if len(r.co.cancelled) > 0 || !r.sw.volume || len(r.sw.secrets) != 1 {
		t.Errorf("cancelled %q; volume %v; secrets %v", r.co.cancelled, r.sw.volume, r.sw.secrets)
	}
	if _, err := os.Stat(filepath.Join(r.state, "certs")); err != nil {
		t.Error(err)
	}

	// Again: nothing is there any more.
	r.out = &syncbuf.Buffer{}
	r.config.Out = r.out
	if err := Down(context.Background(), r.config); err != nil {
		t.Fatal(err)
	}
	wantLines(t, r.out.String(), "make down: no stack forge here\n")
}

// TestDownWithoutToken: a token the coordinator refuses, or none; down
// says so, leaves the builds as they are, and removes the stack all the
// same.
func TestDownWithoutToken(t *testing.T) {
	for _, tc := range []struct {
		name, token string // "": no admin-token file
		want        string
	}{
		{"refused", "forge_admin_other", "make down: the coordinator refused the admin token of %s (a bad or missing credential): " +
			"the builds still queued or running are left as they are\n"},
		{"none", "", "make down: no admin token in %s: the coordinator shows only public repositories' builds, and cancels none\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newDownRig(t)
			r.co.running = []string{"b7"}
			r.config.Purge = true
			file := filepath.Join(r.state, "admin-token")
			os.Remove(file)
			if tc.token != "" {
				if err := os.WriteFile(file, []byte(tc.token), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := Down(context.Background(), r.config); err != nil {
				t.Fatalf("Down: %v\n%s%s", err, r.out, r.err)
			}
			if want := fmt.Sprintf(tc.want, file); r.err.String() != want {
				t.Errorf("stderr:\n%s\nwant:\n%s", r.err, want)
			}
			if strings.Contains(r.out.String(), "cancelling") || len(r.co.cancelled) > 0 {
				t.Errorf("cancelled %q:\n%s", r.co.cancelled, r.out)
			}
			wantLines(t, r.out.String(), "make down: stack forge removed\n")
		})
	}
}

// TestDownGivesUp: a network that cannot be removed and a container that
// stays; down gives up at its deadline and names them.
func TestDownGivesUp(t *testing.T) {
	r := newDownRig(t)
	e := r.config.Engine.(*fakeEngine)
	e.serviceRemove = func(string) error { return nil } // the tasks never go
	e.networkInspect = func(string) (network.Inspect, error) {
		return network.Inspect{Name: "forge_forge", Containers: map[string]network.EndpointResource{"c": {Name: "forge_agent.x"}}}, nil
	}
	r.config.Timeout = 50 * time.Millisecond
	err := Down(context.Background(), r.config)
	if err == nil || err.Error() != "gave up after 0s: the stack forge is not gone (docker stack ps forge)" {
		t.Fatalf("Down: %v", err)
	}
	wantLines(t, r.err.String(), "make down: network forge_forge: attached: forge_agent.x\n",
		"make down: left: forge_agent.1.x Up 1 second\n", "make down: gave up after 0s")
}

// TestDownWithoutSwarm: swarm mode off; only containers and networks are
// looked for, and a purge removes the volume and state.
func TestDownWithoutSwarm(t *testing.T) {
	r := newDownRig(t)
	r.sw.state = swarm.LocalNodeStateInactive
	r.sw.services = map[string]string{}
	r.config.Purge = true
	e := r.config.Engine.(*fakeEngine)
	e.serviceList = nil // not asked when swarm mode is off
	if err := Down(context.Background(), r.config); err != nil {
		t.Fatalf("Down: %v\n%s%s", err, r.out, r.err)
	}
	out := r.out.String()
	wantLines(t, out, "make down: stack forge removed\n", "make down: removed the volume forge_data")
	if strings.Contains(out, "Removing") || strings.Contains(out, "removed the secret") {
		t.Errorf("said:\n%s", out)
	}
}
