package dockertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// BuildService creates a one-task service the way the coordinator does
// for a build: command /forgexec (absent from the image), restart
// condition none, forge.build and the test's label on the service and its
// container. Cleanup(t, cli, testID) removes it.
func BuildService(t testing.TB, cli client.APIClient, image, buildID, testID string) string {
	t.Helper()
	return BuildServiceWith(t, cli, image, buildID, testID, nil)
}

// BuildServiceWith is BuildService with edit applied to the container's
// spec first (a user, say); nil changes nothing.
func BuildServiceWith(t testing.TB, cli client.APIClient, image, buildID, testID string, edit func(*swarm.ContainerSpec)) string {
	t.Helper()
	labels := map[string]string{"forge.build": buildID, LabelTest: testID}
	one := uint64(1)
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "forge-" + testID, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Command: []string{"/forgexec"}, Labels: labels},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
	}
	if edit != nil {
		edit(spec.TaskTemplate.ContainerSpec)
	}
	resp, err := cli.ServiceCreate(Context(t, 30*time.Second), spec, swarm.ServiceCreateOptions{QueryRegistry: false})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	return resp.ID
}

// TaskContainer polls the manager until the service's task names its
// container. (The coordinator learns it faster, from its agents.)
func TaskContainer(ctx context.Context, cli client.APIClient, serviceID string) (swarm.Task, error) {
	f := filters.NewArgs(filters.Arg("service", serviceID))
	for {
		tasks, err := cli.TaskList(ctx, swarm.TaskListOptions{Filters: f})
		if err != nil {
			return swarm.Task{}, err
		}
		for _, task := range tasks {
			if cs := task.Status.ContainerStatus; cs != nil && cs.ContainerID != "" {
				return task, nil
			}
		}
		select {
		case <-ctx.Done():
			return swarm.Task{}, fmt.Errorf("no container for service %s: %w", serviceID, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}
