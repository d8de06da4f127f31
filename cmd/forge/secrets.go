package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/wire"
)

// forge secrets: a repository's secrets through the coordinator's API.
// They need admin permission on the repository (or the admin token), so
// they take --admin-token-file as the agents commands do.

func secretsCommand() *cli.Command {
	return &cli.Command{
		Name:      "secrets",
		Usage:     "set, list and delete a repository's secrets (builds get them as environment variables)",
		ArgsUsage: " ",
		Description: "Builds get the secrets their .forge.yml names (secrets: [NAME]); untrusted builds never do.\n" +
			"These commands need admin permission on the repository: a personal token (--token) of such\n" +
			"a person, or the admin token (--admin-token-file).",
		Subcommands: []*cli.Command{
			{
				Name:      "set",
				Usage:     "set a secret to the value read from standard input (one trailing newline dropped)",
				ArgsUsage: "OWNER/REPO NAME",
				Flags:     agentsFlags(),
				Action:    setSecret,
			},
			{
				Name:      "ls",
				Aliases:   []string{"list"},
				Usage:     "list a repository's secrets: names and when they were set, never values",
				ArgsUsage: "OWNER/REPO",
				Flags:     agentsFlags(),
				Action:    listSecrets,
			},
			{
				Name:      "rm",
				Usage:     "delete a secret",
				ArgsUsage: "OWNER/REPO NAME",
				Flags:     agentsFlags(),
				Action:    deleteSecret,
			},
		},
	}
}

// secretArgs reads OWNER/REPO and, when withName, NAME.
func secretArgs(c *cli.Context, withName bool) (owner, repo, name string, err error) {
	want := 1
	usage := "OWNER/REPO"
	if withName {
		want, usage = 2, "OWNER/REPO NAME"
	}
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "-") {
			return "", "", "", fmt.Errorf("%s: flags go before the arguments: forge secrets %s [--server URL] [--token T | --admin-token-file F] %s", a, c.Command.Name, usage)
		}
	}
	if c.NArg() != want {
		return "", "", "", fmt.Errorf("secrets %s takes %s", c.Command.Name, usage)
	}
	owner, repo, ok := strings.Cut(c.Args().First(), "/")
	if !ok || owner == "" || repo == "" || strings.Contains(repo, "/") {
		return "", "", "", fmt.Errorf("%q: want OWNER/REPO, like acme/widgets", c.Args().First())
	}
	if withName {
		name = c.Args().Get(1)
		if err := wire.ValidSecretName(name); err != nil {
			return "", "", "", err
		}
	}
	return owner, repo, name, nil
}

// secretsCall is a subcommand's arguments (secretArgs) and its client:
// agentsClient's, for a caller who gave a credential (a repository's
// secrets are nobody's business).
func secretsCall(c *cli.Context, withName bool) (owner, repo, name string, cl *web.Client, err error) {
	if owner, repo, name, err = secretArgs(c, withName); err != nil {
		return
	}
	if lineageString(c, "token") == "" && lineageString(c, "admin-token-file") == "" {
		err = errors.New("these commands need admin permission on the repository: give --token (FORGE_TOKEN) or --admin-token-file")
		return
	}
	cl, err = agentsClient(c)
	return
}

// secretsError is apiError for these commands, which need admin
// permission on the repository.
func secretsError(err error, what string) error {
	if errors.Is(err, web.ErrUnauthorized) {
		return fmt.Errorf("%s: %w (these commands need admin permission on the repository: --token of such a person, or --admin-token-file)", what, err)
	}
	return apiError(err, what)
}

func setSecret(c *cli.Context) error {
	owner, repo, name, cl, err := secretsCall(c, true)
	if err != nil {
		return err
	}
	in := c.App.Reader
	if in == nil {
		in = os.Stdin
	}
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprintf(c.App.ErrWriter, "the value of %s, then a newline and Ctrl-D:\n", name)
		}
	}
	value, err := io.ReadAll(io.LimitReader(in, wire.MaxSecretSize+3))
	if err != nil {
		return fmt.Errorf("read the value from standard input: %w", err)
	}
	// echo, and a file's last line, end with a newline that is no part
	// of the value.
	if v, ok := bytes.CutSuffix(value, []byte("\n")); ok {
		value = bytes.TrimSuffix(v, []byte("\r"))
	}
	if err := wire.ValidSecretValue(value); err != nil {
		return fmt.Errorf("secret %s: %v (the value is read from standard input)", name, err)
	}
	if err := cl.SetSecret(c.Context, owner, repo, name, value); err != nil {
		return secretsError(err, "set "+name+" of "+owner+"/"+repo)
	}
	fmt.Fprintf(c.App.Writer, "set %s of %s/%s (%d bytes)\n", name, owner, repo, len(value))
	return nil
}

func listSecrets(c *cli.Context) error {
	owner, repo, _, cl, err := secretsCall(c, false)
	if err != nil {
		return err
	}
	ss, err := cl.Secrets(c.Context, owner, repo)
	if err != nil {
		return secretsError(err, "list the secrets of "+owner+"/"+repo)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tUPDATED\tBY")
	for _, s := range ss {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Updated.Local().Format(time.DateTime), s.UpdatedBy)
	}
	return tw.Flush()
}

func deleteSecret(c *cli.Context) error {
	owner, repo, name, cl, err := secretsCall(c, true)
	if err != nil {
		return err
	}
	if err := cl.DeleteSecret(c.Context, owner, repo, name); err != nil {
		return secretsError(err, "delete "+name+" of "+owner+"/"+repo)
	}
	fmt.Fprintf(c.App.Writer, "deleted %s of %s/%s\n", name, owner, repo)
	return nil
}
