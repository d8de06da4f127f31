package agents

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
)

// SwarmNodes is the part of the manager's Engine API that checks agents.
type SwarmNodes interface {
	NodeInspectWithRaw(ctx context.Context, nodeID string) (swarm.Node, []byte, error)
	TaskList(ctx context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error)
}

// SwarmVerifier binds a node id to a connection only when swarm agrees:
// the node exists by exactly that id and is ready, and the connection comes from it, that is
// from the node's own address, or from the address of a running task on
// that node (an agent deployed as a global service dials from its task's
// address on the overlay network). A connection from loopback speaks only
// for the coordinator's own node (LocalNodeID), as with `forge run`.
type SwarmVerifier struct {
	Docker      SwarmNodes
	LocalNodeID string
}

// VerifyAgent implements NodeVerifier.
func (v *SwarmVerifier) VerifyAgent(ctx context.Context, nodeID string, remote net.Addr) error {
	if nodeID == "" {
		return fmt.Errorf("the agent names no node")
	}
	node, _, err := v.Docker.NodeInspectWithRaw(ctx, nodeID)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("node %s is not in this swarm", nodeID)
	}
	if err != nil {
		return fmt.Errorf("inspect node %s: %w", nodeID, err)
	}
	if node.ID != nodeID {
		// Swarm's API also takes a host name or an id prefix: an agent
		// speaks for a node by its full id only.
		return fmt.Errorf("%q is not a node's full id (swarm resolves it to node %s, %s); an agent names its node by its full id",
			nodeID, node.ID, node.Description.Hostname)
	}
	if node.Status.State != swarm.NodeStateReady {
		return fmt.Errorf("node %s (%s) is %s, not ready", nodeID, node.Description.Hostname, node.Status.State)
	}
	ip, err := addrIP(remote)
	if err != nil {
		return err
	}
	if ip.IsLoopback() {
		if nodeID == v.LocalNodeID {
			return nil
		}
		return fmt.Errorf("a connection from loopback (%s) speaks only for the coordinator's node %s, not %s", ip, v.LocalNodeID, nodeID)
	}
	if a, err := netip.ParseAddr(node.Status.Addr); err == nil && a.Unmap() == ip {
		return nil
	}
	tasks, err := v.Docker.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
		filters.Arg("node", nodeID), filters.Arg("desired-state", "running"))})
	if err != nil {
		return fmt.Errorf("list tasks of node %s: %w", nodeID, err)
	}
	for _, t := range tasks {
		for _, na := range t.NetworksAttachments {
			for _, cidr := range na.Addresses {
				if p, err := netip.ParsePrefix(cidr); err == nil && p.Addr().Unmap() == ip {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("connection from %s is not from node %s (%s, address %s) nor from a task on it",
		ip, nodeID, node.Description.Hostname, node.Status.Addr)
}

func addrIP(a net.Addr) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		// A zone or an odd network: fall back to the host part.
		host, _, herr := net.SplitHostPort(a.String())
		if herr != nil {
			return netip.Addr{}, fmt.Errorf("remote address %s: %w", a, err)
		}
		ip, perr := netip.ParseAddr(strings.Split(host, "%")[0])
		if perr != nil {
			return netip.Addr{}, fmt.Errorf("remote address %s: %w", a, perr)
		}
		return ip.Unmap(), nil
	}
	return ap.Addr().Unmap(), nil
}
