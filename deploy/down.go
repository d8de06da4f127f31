package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/volume"

	"github.com/forge-ci/forge/coordinator/web"
)

// DownConfig is forge deploy down's configuration.
type DownConfig struct {
	Config
	// HTTPPort is the coordinator's published port (FORGE_HTTP_PORT);
	// empty: forge.env's, else 8080.
	HTTPPort string
	// Purge also cancels the builds still queued or running, and removes
	// the secrets, the data volume and the state folder (PURGE=1).
	Purge bool

	// statusGrace is the pause after cancelling builds, for their error
	// statuses to reach GitHub (2 s when zero).
	statusGrace time.Duration
}

const (
	defaultDownTimeout = 120 * time.Second
	defaultStatusGrace = 2 * time.Second
)

// Down removes the stack and waits, at most Timeout, until its services,
// containers and network are gone, so that Up can follow at once. The
// secrets, the coordinator's data volume and the state folder stay unless
// Purge. Every failure is written to Err, like every other line, before
// Down returns it.
func Down(ctx context.Context, c DownConfig) error {
	if c.Timeout <= 0 {
		c.Timeout = defaultDownTimeout
	}
	if c.statusGrace <= 0 {
		c.statusGrace = defaultStatusGrace
	}
	r, err := c.start("make down")
	if err != nil {
		return r.finish(err)
	}
	d := &down{run: r, c: c, deadline: time.Now().Add(c.Timeout)}
	return r.finish(d.down(ctx))
}

type down struct {
	*run
	c        DownConfig
	deadline time.Time
	active   bool // swarm mode is on
}

func (d *down) down(ctx context.Context) error {
	info, err := d.swarmManager(ctx)
	if err != nil {
		return err
	}
	d.active = info.Swarm.LocalNodeState == swarm.LocalNodeStateActive
	s, err := Settings{HTTPPort: d.c.HTTPPort}.withSaved(d.StateDir)
	if err != nil {
		return err
	}
	if s.HTTPPort == "" {
		s.HTTPPort = defaultHTTPPort
	}
	token, err := readAdminToken(d.StateDir)
	if err != nil {
		return err
	}
	co, err := newCoordinator(s.HTTPPort, token, d.HTTP)
	if err != nil {
		return err
	}
	if err := d.builds(ctx, co); err != nil {
		return err
	}
	if err := d.removeStack(ctx); err != nil {
		return err
	}
	if !d.c.Purge {
		d.say("kept: the Docker secrets, the data volume %s and %s (make down PURGE=1 removes them)", d.service("data"), d.StateDir)
		return nil
	}
	return d.purge(ctx)
}

// builds deals with the builds still queued or running: with Purge they
// are cancelled (their record would go with the data), else they stay in
// swarm and the next make up finishes them.
func (d *down) builds(ctx context.Context, co coordinator) error {
	left, err := d.leftover(ctx)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(left.services, func(s swarm.Service) bool { return s.Spec.Name == d.service("coordinator") }) {
		return nil
	}
	if !co.hasToken {
		d.warn("no admin token in %s: the coordinator shows only public repositories' builds, and cancels none",
			filepath.Join(d.StateDir, adminTokenFile))
	}
	running, err := co.unfinished(ctx)
	if errors.Is(err, web.ErrUnauthorized) {
		d.refused(err)
		return nil
	}
	switch {
	case len(running) == 0:
		return nil
	case !d.c.Purge:
		d.say("%d build(s) still queued or running: their services stay, and the next make up finishes them", len(running))
		return nil
	}
	d.say("cancelling %d build(s) still queued or running", len(running))
	for _, id := range running {
		// One that ended meanwhile refuses; the wait below tells.
		if err := co.cancel(ctx, id); errors.Is(err, web.ErrUnauthorized) {
			d.refused(err)
			return nil
		}
	}
	waitCtx, cancel := context.WithDeadline(ctx, d.deadline)
	defer cancel()
	for {
		still, _ := co.unfinished(waitCtx)
		if len(still) == 0 || !time.Now().Before(d.deadline) {
			break
		}
		if d.pause(waitCtx) != nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
	// The coordinator posts their error statuses to GitHub, queued at the cancel.
	return sleep(ctx, d.c.statusGrace)
}

// refused says that the coordinator refused the admin token, so that the
// builds still queued or running are left as they are.
func (d *down) refused(err error) {
	d.warn("the coordinator refused the admin token of %s (%v): the builds still queued or running are left as they are",
		filepath.Join(d.StateDir, adminTokenFile), err)
}

// stackObjects are what docker stack deploy made that is still there.
type stackObjects struct {
	services   []swarm.Service
	containers []container.Summary
	networks   []network.Summary
}

func (o stackObjects) empty() bool {
	return len(o.services) == 0 && len(o.containers) == 0 && len(o.networks) == 0
}

func (d *down) leftover(ctx context.Context) (stackObjects, error) {
	var o stackObjects
	ns := filters.NewArgs(filters.Arg("label", d.namespace()))
	var err error
	if d.active {
		if o.services, err = d.engine.ServiceList(ctx, swarm.ServiceListOptions{Filters: ns}); err != nil {
			return o, fmt.Errorf("list the stack's services: %w", err)
		}
	}
	if o.containers, err = d.engine.ContainerList(ctx, container.ListOptions{All: true, Filters: ns}); err != nil {
		return o, fmt.Errorf("list the stack's containers: %w", err)
	}
	if o.networks, err = d.engine.NetworkList(ctx, network.ListOptions{Filters: ns}); err != nil {
		return o, fmt.Errorf("list the stack's networks: %w", err)
	}
	return o, nil
}

// removeStack removes the services and the network, as docker stack rm
// does, and waits until they and the containers are gone. The network
// goes only when the last task has left it, so it is asked again.
func (d *down) removeStack(ctx context.Context) error {
	left, err := d.leftover(ctx)
	if err != nil {
		return err
	}
	if left.empty() {
		d.say("no stack %s here", d.Stack)
		return nil
	}
	slices.SortFunc(left.services, func(a, b swarm.Service) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	for _, s := range left.services {
		d.say("Removing service %s", s.Spec.Name)
		if err := d.engine.ServiceRemove(ctx, s.ID); err != nil {
			d.warn("Failed to remove service %s: %v", s.Spec.Name, err)
		}
	}
	if d.active {
		for _, n := range left.networks {
			d.say("Removing network %s", n.Name)
			d.engine.NetworkRemove(ctx, n.ID) // fails while tasks are on it: asked again below
		}
	}
	seconds := int(d.Timeout.Seconds())
	d.say("waiting (at most %ds) for the stack's containers and network to be gone", seconds)
	waitCtx, cancel := context.WithDeadline(ctx, d.deadline)
	defer cancel()
	for {
		left, err := d.leftover(waitCtx)
		if err == nil && left.empty() {
			break
		}
		if err == nil && len(left.containers) == 0 {
			for _, n := range left.networks {
				d.engine.NetworkRemove(waitCtx, n.ID)
			}
		}
		if !time.Now().Before(d.deadline) {
			d.showLeft(ctx, left)
			return fmt.Errorf("gave up after %ds: the stack %s is not gone (docker stack ps %s)", seconds, d.Stack, d.Stack)
		}
		if d.pause(waitCtx) != nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
	d.say("stack %s removed", d.Stack)
	return nil
}

// showLeft names what is keeping the stack.
func (d *down) showLeft(ctx context.Context, left stackObjects) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, n := range left.networks {
		var attached []string
		if nw, err := d.engine.NetworkInspect(ctx, n.ID, network.InspectOptions{}); err == nil {
			for _, c := range nw.Containers {
				attached = append(attached, c.Name)
			}
		}
		d.warn("network %s: attached: %s", n.Name, strings.Join(attached, " "))
	}
	for _, c := range left.containers {
		name := c.ID
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		d.warn("left: %s %s", name, c.Status)
	}
}

// purge removes the stack's secrets, its data volume and the state
// folder. What cannot be removed is said, and fails the run once the rest
// is done.
func (d *down) purge(ctx context.Context) error {
	failed := 0
	fail := func(format string, args ...any) {
		d.warn(format, args...)
		failed++
	}
	secrets, err := d.engine.SecretList(ctx, swarm.SecretListOptions{Filters: filters.NewArgs(filters.Arg("label", "forge.stack="+d.Stack))})
	if err != nil && d.active {
		fail("cannot list the stack's secrets: %v", err)
	}
	slices.SortFunc(secrets, func(a, b swarm.Secret) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	for _, s := range secrets {
		if err := d.engine.SecretRemove(ctx, s.ID); err != nil {
			fail("cannot remove the secret %s: %v", s.Spec.Name, err)
			continue
		}
		d.say("removed the secret %s", s.Spec.Name)
	}
	vols, err := d.engine.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", d.namespace()))})
	if err != nil {
		fail("cannot list the stack's volumes: %v", err)
	}
	slices.SortFunc(vols.Volumes, func(a, b *volume.Volume) int { return strings.Compare(a.Name, b.Name) })
	for _, v := range vols.Volumes {
		if err := d.engine.VolumeRemove(ctx, v.Name, false); err != nil {
			fail("cannot remove the volume %s: %v", v.Name, err)
			continue
		}
		d.say("removed the volume %s (the coordinator's database and logs)", v.Name)
	}
	if fi, err := os.Stat(d.StateDir); err == nil && fi.IsDir() {
		if err := os.RemoveAll(d.StateDir); err != nil {
			fail("%v", err)
		} else {
			d.say("removed %s (CA, certificates, join token, webhook secret, admin token, session key, secrets key, settings)", d.StateDir)
		}
	}
	if failed > 0 {
		return fmt.Errorf("PURGE=1 left %d thing(s) behind (above)", failed)
	}
	return nil
}
