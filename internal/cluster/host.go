package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// hostState is what of the host's network settings an engine changes when
// it starts in the host's namespace: the firewall and forwarding. The
// cluster's engines run in namespaces of their own and should change
// none of it; Close checks that they did not.
type hostState struct {
	iptables string            // iptables-save, as saved
	sysctls  map[string]string // path -> value
}

var forwarding = []string{
	"/proc/sys/net/ipv4/ip_forward",
	"/proc/sys/net/ipv6/conf/all/forwarding",
}

func readHostState(ctx context.Context) (hostState, error) {
	out, err := exec.CommandContext(ctx, "iptables-save").Output()
	if err != nil {
		return hostState{}, fmt.Errorf("cluster: iptables-save: %w", err)
	}
	h := hostState{iptables: string(out), sysctls: map[string]string{}}
	for _, p := range forwarding {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6 on this kernel
		}
		if err != nil {
			return hostState{}, fmt.Errorf("cluster: %w", err)
		}
		h.sysctls[p] = strings.TrimSpace(string(b))
	}
	return h, nil
}

// counters and comments change by themselves (packets, timestamps).
var noise = regexp.MustCompile(`(?m)^#.*$|\[\d+:\d+\]`)

func rules(s string) string { return noise.ReplaceAllString(s, "") }

// restore compares the host with h; where it differs, it puts h back and
// says what it changed, as an error: a change means the cluster leaked
// into the host, which it must not.
func (h hostState) restore(ctx context.Context) error {
	now, err := readHostState(ctx)
	if err != nil {
		return err
	}
	var changed []string
	if rules(now.iptables) != rules(h.iptables) {
		cmd := exec.CommandContext(ctx, "iptables-restore")
		cmd.Stdin = strings.NewReader(h.iptables)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cluster: the host's iptables rules changed, and iptables-restore failed: %w: %s", err, bytes.TrimSpace(out))
		}
		changed = append(changed, "iptables rules")
	}
	for p, v := range h.sysctls {
		if now.sysctls[p] != v {
			if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
				return fmt.Errorf("cluster: %s changed to %s, and putting back %s failed: %w", p, now.sysctls[p], v, err)
			}
			changed = append(changed, fmt.Sprintf("%s (%s, was %s)", p, now.sysctls[p], v))
		}
	}
	if len(changed) > 0 {
		return fmt.Errorf("cluster: the host's settings changed while the cluster ran; restored: %s", strings.Join(changed, ", "))
	}
	return nil
}
