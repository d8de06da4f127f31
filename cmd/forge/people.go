package main

import (
	"errors"
	"fmt"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator/web"
)

// The people's commands: the coordinator's API from a terminal.

func serverFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Usage: "the coordinator's URL (its --public-url)", EnvVars: env("server")},
		&cli.StringFlag{Name: "token", Usage: "an API token, sent as a bearer token", EnvVars: env("token")},
	}
}

// apiClient makes the client of --server with --token.
func apiClient(c *cli.Context) (*web.Client, error) {
	return web.NewClient(c.String("server"), c.String("token"), nil)
}

// apiError says what to do about a refused request.
func apiError(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, web.ErrUnauthorized):
		return fmt.Errorf("%s: %w (check --token or FORGE_TOKEN)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// buildAndClient is the single build id a command takes, and the client
// of --server.
func buildAndClient(c *cli.Context) (string, *web.Client, error) {
	if c.NArg() != 1 {
		return "", nil, fmt.Errorf("%s takes one build id (forge builds lists them)", c.Command.Name)
	}
	cl, err := apiClient(c)
	return c.Args().First(), cl, err
}

func buildsCommand() *cli.Command {
	return &cli.Command{
		Name:      "builds",
		Usage:     "list builds, newest first",
		ArgsUsage: " ",
		Flags: append(serverFlags(),
			&cli.StringFlag{Name: "repo", Usage: "only OWNER/REPO (or OWNER)"},
			&cli.StringFlag{Name: "state", Usage: "only builds in this state: queued, running, success, failure, error"},
			&cli.IntFlag{Name: "limit", Usage: "at most this many", Value: 50},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("builds takes no arguments (got %q); filter with --repo and --state", c.Args().First())
			}
			cl, err := apiClient(c)
			if err != nil {
				return err
			}
			o := web.ListOptions{State: c.String("state"), Limit: c.Int("limit")}
			o.Owner, o.Repo, _ = strings.Cut(c.String("repo"), "/")
			bs, err := cl.Builds(c.Context, o)
			if err != nil {
				return apiError(err, "list builds")
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tREPOSITORY\tREF\tACTION\tCREATED\tREASON")
			for _, b := range bs {
				ref := b.Branch
				if b.PullRequest != 0 {
					ref = fmt.Sprintf("#%d", b.PullRequest)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s %.7s\t%s\t%s\t%s\n", b.ID, b.State, b.Owner, b.Repo, ref, b.SHA,
					b.Action, b.Created.Local().Format(time.DateTime), b.Reason)
			}
			return tw.Flush()
		},
	}
}

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a build's output",
		ArgsUsage: "ID",
		Flags: append(serverFlags(),
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "go on until the build ends"}),
		Action: func(c *cli.Context) error {
			id, cl, err := buildAndClient(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			err = cl.Log(ctx, id, c.Bool("follow"), c.App.Writer)
			if ctx.Err() != nil && c.Context.Err() == nil {
				return nil // interrupted while following: that is how -f ends
			}
			return apiError(err, "log of "+id)
		},
	}
}

func cancelCommand() *cli.Command {
	return &cli.Command{
		Name:      "cancel",
		Usage:     "cancel a queued or running build",
		ArgsUsage: "ID",
		Flags:     serverFlags(),
		Action: func(c *cli.Context) error {
			id, cl, err := buildAndClient(c)
			if err != nil {
				return err
			}
			if err := cl.Cancel(c.Context, id); err != nil {
				return apiError(err, "cancel "+id)
			}
			fmt.Fprintf(c.App.Writer, "cancelling %s\n", id)
			return nil
		},
	}
}

func agentsCommand() *cli.Command {
	return &cli.Command{
		Name:      "agents",
		Usage:     "list the connected agents, one per node",
		ArgsUsage: " ",
		Flags:     serverFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("agents takes no arguments (got %q)", c.Args().First())
			}
			cl, err := apiClient(c)
			if err != nil {
				return err
			}
			as, err := cl.Agents(c.Context)
			if err != nil {
				return apiError(err, "list agents")
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tHOSTNAME\tAGENT\tENGINE\tADDRESS\tCONNECTED")
			for _, a := range as {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.NodeID, a.Hostname, a.AgentVersion, a.EngineVersion, a.Address,
					a.ConnectedSince.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}
