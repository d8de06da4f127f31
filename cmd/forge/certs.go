package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/deploy"
	"github.com/forge-ci/forge/internal/atomicfile"
	"github.com/forge-ci/forge/wire"
)

func certsCommand() *cli.Command {
	dir := &cli.StringFlag{Name: "dir", Usage: "folder of the CA and the certificates", Value: "forge-certs", EnvVars: []string{"FORGE_CERTS_DIR"}}
	force := &cli.BoolFlag{Name: "force", Usage: "overwrite files that exist"}
	return &cli.Command{
		Name:  "certs",
		Usage: "the small PKI behind the coordinator <-> agent mutual TLS",
		Description: "Every agent and the coordinator present a certificate from one forge CA; the role\n" +
			"(coordinator, or the agent of one swarm node) is written into the certificate as a URI\n" +
			"(spiffe://forge/coordinator, spiffe://forge/agent/<node-id>) and checked by the other side.\n\n" +
			"   forge certs init --dir certs\n" +
			"   forge certs issue --dir certs --role coordinator --name coordinator --host coordinator,10.0.0.5\n" +
			"   forge certs join-token --dir certs\n\n" +
			"The coordinator, given the CA key (--tls-ca-key) and the join token (--join-token-file),\n" +
			"signs each agent a certificate for its own node (24h, renewed while it is connected):\n" +
			"agents need only ca.pem and the token. Without them, issue one per node by hand:\n\n" +
			"   forge certs issue --dir certs --role agent --node $(docker node inspect -f '{{.ID}}' NODE) --ttl 90d\n\n" +
			"Keys and the token are written with mode 0600. Keep ca-key.pem where only the coordinator reads it.",
		Subcommands: []*cli.Command{
			{
				Name:      "init",
				Usage:     "create a new CA: DIR/ca.pem and DIR/ca-key.pem",
				ArgsUsage: " ",
				Flags: []cli.Flag{dir, force,
					&cli.StringFlag{Name: "name", Usage: "the CA's common name", Value: "Forge CA"},
					&cli.DurationFlag{Name: "valid-for", Usage: "how long the CA is valid", Value: wire.DefaultCAValidity},
				},
				Action: certsInit,
			},
			{
				Name:      "issue",
				Usage:     "issue a certificate signed by DIR's CA: DIR/NAME.pem and DIR/NAME-key.pem",
				ArgsUsage: " ",
				Flags: []cli.Flag{dir, force,
					&cli.StringFlag{Name: "role", Usage: "coordinator or agent", Required: true},
					&cli.StringFlag{Name: "node", Usage: "the swarm node id an agent certificate speaks for (docker node ls, the ID column, in full); required for --role agent"},
					&cli.StringFlag{Name: "name", Usage: "certificate name, also the file names (default: coordinator, or agent-NODE)"},
					&cli.StringSliceFlag{Name: "host", Usage: "DNS names and IP addresses the coordinator is reached at (comma-separated or repeated); agents check the coordinator's against them"},
					&cli.GenericFlag{Name: "ttl", Aliases: []string{"valid-for"}, Usage: "how long the certificate is valid (Go's forms, e.g. 36h, or days, e.g. 90d)",
						Value: &days{wire.DefaultLeafValidity}},
				},
				Action: certsIssue,
			},
			{
				Name:      "join-token",
				Usage:     "write a new join token to DIR/join-token, for the coordinator's and the agents' --join-token-file",
				ArgsUsage: " ",
				Flags:     []cli.Flag{dir, force},
				Action:    certsJoinToken,
			},
		},
	}
}

// days is a duration flag that also takes whole days ("90d"), the unit
// certificates are thought of in.
type days struct{ d time.Duration }

func (v *days) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.ParseUint(n, 10, 16)
		if err != nil {
			return fmt.Errorf("%q: want whole days such as 90d, or a Go duration such as 36h", s)
		}
		v.d = time.Duration(d) * 24 * time.Hour
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q: want a duration such as 36h, or days such as 90d", s)
	}
	v.d = d
	return nil
}

func (v *days) String() string {
	if v.d > 0 && v.d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", v.d/(24*time.Hour))
	}
	return v.d.String()
}

func certsInit(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("certs init takes no arguments (got %q)", c.Args().First())
	}
	dir := c.String("dir")
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := checkOverwrite(c.Bool("force"), certFile, keyFile); err != nil {
		return err
	}
	ca, err := wire.NewCA(c.String("name"), c.Duration("valid-for"))
	if err != nil {
		return err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	if err := writeFiles(dir, map[string][]byte{certFile: ca.CertPEM()}, map[string][]byte{keyFile: key}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote %s and %s (valid until %s)\n", certFile, keyFile, ca.Cert.NotAfter.Format(time.DateOnly))
	return nil
}

func certsIssue(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("certs issue takes no arguments (got %q)", c.Args().First())
	}
	dir, name, node := c.String("dir"), c.String("name"), c.String("node")
	role, err := wire.ParseRole(c.String("role"))
	if err != nil {
		return fmt.Errorf("--role: %w", err)
	}
	switch {
	case role == wire.RoleAgent && node == "":
		return errors.New("--node is required for --role agent: an agent certificate speaks for one swarm node (its full id: docker node ls, or docker info -f '{{.Swarm.NodeID}}' on the node)")
	case role == wire.RoleAgent:
		if err := wire.ValidNodeID(node); err != nil {
			return fmt.Errorf("--node %q: %v; want the node's full swarm id (docker node ls)", node, err)
		}
	case node != "":
		return fmt.Errorf("--node: a %s certificate names no node (only --role agent takes --node)", role)
	}
	if name == "" {
		name = string(role)
		if role == wire.RoleAgent {
			name = "agent-" + node
		}
	}
	if strings.ContainsAny(name, `/\`) || name == "ca" || strings.HasPrefix(name, ".") {
		return fmt.Errorf("--name %q: use a plain name such as coordinator or agent-NODE (it names the files)", name)
	}
	ttl := c.Generic("ttl").(*days).d
	if ttl <= 0 {
		return fmt.Errorf("--ttl %s: want a positive duration", ttl)
	}
	var hosts []string
	for _, h := range c.StringSlice("host") {
		for _, part := range strings.Split(h, ",") {
			if part = strings.TrimSpace(part); part != "" {
				hosts = append(hosts, part)
			}
		}
	}
	if role == wire.RoleCoordinator && len(hosts) == 0 {
		return errors.New("--host: a coordinator certificate needs the names or addresses agents dial it at (for example --host coordinator,10.0.0.5)")
	}
	caCert, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return fmt.Errorf("read the CA (run forge certs init --dir %s first): %w", dir, err)
	}
	caKey, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return fmt.Errorf("read the CA key: %w", err)
	}
	ca, err := wire.LoadCA(caCert, caKey)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := checkOverwrite(c.Bool("force"), certFile, keyFile); err != nil {
		return err
	}
	cert, key, err := ca.Issue(wire.IssueRequest{Role: role, Name: name, Node: node, Hosts: hosts, ValidFor: ttl})
	if err != nil {
		return err
	}
	if err := writeFiles(dir, map[string][]byte{certFile: cert}, map[string][]byte{keyFile: key}); err != nil {
		return err
	}
	who := "role " + string(role)
	if node != "" {
		who += ", node " + node
	}
	if block, _ := pem.Decode(cert); block != nil {
		if leaf, err := x509.ParseCertificate(block.Bytes); err == nil {
			// Issue caps the validity at the CA's own end: say what it is.
			who += ", valid until " + leaf.NotAfter.Local().Format(time.DateTime)
		}
	}
	fmt.Fprintf(c.App.Writer, "wrote %s and %s (%s)\n", certFile, keyFile, who)
	return nil
}

// certsJoinToken writes a new join token. The coordinator reads its
// --join-token-file again when it changes, so a new token takes effect at
// the next join; certificates already issued stay valid.
func certsJoinToken(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("certs join-token takes no arguments (got %q)", c.Args().First())
	}
	dir := c.String("dir")
	file := filepath.Join(dir, deploy.JoinTokenFile)
	if err := checkOverwrite(c.Bool("force"), file); err != nil {
		return err
	}
	if err := writeFiles(dir, nil, map[string][]byte{file: []byte(deploy.NewJoinToken())}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote %s (mode 0600): give it to the coordinator and the agents as --join-token-file\n", file)
	return nil
}

func checkOverwrite(force bool, files ...string) error {
	if force {
		return nil
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s exists; use --force to replace it", f)
		}
	}
	return nil
}

// writeFiles writes certificates (0644) and keys (0600), each through a
// temporary file and a rename, so a crash never leaves half a key.
func writeFiles(dir string, public, private map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for p, d := range private {
		if err := atomicfile.Write(p, d, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	for p, d := range public {
		if err := atomicfile.Write(p, d, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}
