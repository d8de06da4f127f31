package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

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
			"(coordinator or agent) is written into the certificate and checked by the other side.\n\n" +
			"   forge certs init --dir certs\n" +
			"   forge certs issue --dir certs --role coordinator --name coordinator --host coordinator,10.0.0.5\n" +
			"   forge certs issue --dir certs --role agent --name agent\n\n" +
			"Keys are written with mode 0600. Keep ca-key.pem offline once the certificates are issued.",
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
					&cli.StringFlag{Name: "name", Usage: "certificate name, also the file names", Required: true},
					&cli.StringSliceFlag{Name: "host", Usage: "DNS names and IP addresses the coordinator is reached at (comma-separated or repeated); agents check the coordinator's against them"},
					&cli.DurationFlag{Name: "valid-for", Usage: "how long the certificate is valid", Value: wire.DefaultLeafValidity},
				},
				Action: certsIssue,
			},
		},
	}
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
	dir, name := c.String("dir"), c.String("name")
	role, err := wire.ParseRole(c.String("role"))
	if err != nil {
		return fmt.Errorf("--role: %w", err)
	}
	if name == "" || strings.ContainsAny(name, `/\`) || name == "ca" || strings.HasPrefix(name, ".") {
		return fmt.Errorf("--name %q: use a plain name such as coordinator or agent (it names the files)", name)
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
	cert, key, err := ca.Issue(wire.IssueRequest{Role: role, Name: name, Hosts: hosts, ValidFor: c.Duration("valid-for")})
	if err != nil {
		return err
	}
	if err := writeFiles(dir, map[string][]byte{certFile: cert}, map[string][]byte{keyFile: key}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote %s and %s (role %s)\n", certFile, keyFile, role)
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
