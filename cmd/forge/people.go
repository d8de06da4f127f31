package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/wire"
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
			&cli.StringFlag{Name: "branch", Usage: "only builds of this branch (a pull request's head branch too)"},
			&cli.IntFlag{Name: "pr", Usage: "only builds of this pull request number"},
			&cli.StringFlag{Name: "state", Usage: "only builds in this state: queued, running, success, failure, error"},
			&cli.IntFlag{Name: "limit", Usage: "at most this many", Value: 50},
			&cli.StringFlag{Name: "before", Usage: "only builds older than this build ID (the next page: the last ID shown)"},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("builds takes no arguments (got %q); filter with --repo, --branch, --pr and --state", c.Args().First())
			}
			if c.Int("pr") < 0 {
				return fmt.Errorf("--pr %d: want a pull request number", c.Int("pr"))
			}
			cl, err := apiClient(c)
			if err != nil {
				return err
			}
			o := web.ListOptions{Branch: c.String("branch"), PullRequest: c.Int("pr"), State: c.String("state"),
				Limit: c.Int("limit"), Before: c.String("before")}
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

// buildCommand is a people's command on one build, ID: do acts on it
// through the API, and names it in its errors as what (e.g. "cancel ID").
func buildCommand(name, usage string, do func(c *cli.Context, cl *web.Client, id string) (string, error)) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "ID",
		Flags:     serverFlags(),
		Action: func(c *cli.Context) error {
			id, cl, err := buildAndClient(c)
			if err != nil {
				return err
			}
			out, err := do(c, cl, id)
			if err != nil {
				return apiError(err, name+" "+id)
			}
			fmt.Fprintln(c.App.Writer, out)
			return nil
		},
	}
}

func cancelCommand() *cli.Command {
	return buildCommand("cancel", "cancel a queued or running build", func(c *cli.Context, cl *web.Client, id string) (string, error) {
		return "cancelling " + id, cl.Cancel(c.Context, id)
	})
}

func approveCommand() *cli.Command {
	return buildCommand("approve", "let a build awaiting approval (a fork's or an outside contributor's pull request) run, at its commit only",
		func(c *cli.Context, cl *web.Client, id string) (string, error) {
			b, err := cl.Approve(c.Context, id)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("approved %s (%s/%s at %s) by %s", b.ID, b.Owner, b.Repo, b.SHA, b.ApprovedBy), nil
		})
}

func rerunCommand() *cli.Command {
	return buildCommand("rerun", "build a build's commit and action again (a new build, linked to it)",
		func(c *cli.Context, cl *web.Client, id string) (string, error) {
			b, err := cl.Rerun(c.Context, id)
			if err != nil {
				return "", err
			}
			state := b.State
			if b.AwaitingApproval {
				state = "awaiting approval"
			}
			return fmt.Sprintf("re-running %s as %s (%s/%s at %s, %s): %s", id, b.ID, b.Owner, b.Repo, b.SHA, b.Action, state), nil
		})
}

// agentsFlags are the agents commands': the server, and either --token or
// the admin token's file (these commands need a Forge admin).
func agentsFlags() []cli.Flag {
	return append(serverFlags(),
		&cli.PathFlag{Name: "admin-token-file", Usage: "file holding the admin token (the coordinator's --admin-token-file), instead of --token", EnvVars: env("admin-token-file")})
}

// agentsClient is the client of the agents commands: its token is --token,
// or the content of --admin-token-file.
func agentsClient(c *cli.Context) (*web.Client, error) {
	token := lineageString(c, "token")
	if f := lineageString(c, "admin-token-file"); f != "" {
		if token != "" {
			return nil, errors.New("give --token (FORGE_TOKEN) or --admin-token-file (FORGE_ADMIN_TOKEN_FILE), not both")
		}
		var err error
		if token, err = readFileFlag("admin-token-file", f); err != nil {
			return nil, err
		}
	}
	return web.NewClient(lineageString(c, "server"), token, nil)
}

// lineageString is the flag name as given on the command line to this
// command or a parent (forge agents --server S revoke N, or forge agents
// revoke --server S N), else its environment variable. Every level defines
// the flag, and each level's copy takes the variable: a value that differs
// from it was given on the command line.
func lineageString(c *cli.Context, name string) string {
	fromEnv := os.Getenv(env(name)[0])
	for _, x := range c.Lineage() {
		if x.Command != nil && x.IsSet(name) && x.String(name) != fromEnv {
			return x.String(name)
		}
	}
	return fromEnv
}

// agentsError is apiError for the agents commands, which need an admin.
func agentsError(err error, what string) error {
	if errors.Is(err, web.ErrUnauthorized) {
		return fmt.Errorf("%s: %w (these commands need a Forge admin: --admin-token-file, or --token with an admin's token)", what, err)
	}
	return apiError(err, what)
}

// agentNodeAndClient is the one node id an agents subcommand takes, and
// its client.
func agentNodeAndClient(c *cli.Context) (string, *web.Client, error) {
	if c.NArg() != 1 {
		return "", nil, fmt.Errorf("agents %s takes one swarm node id (forge agents lists the connected ones; docker node ls lists all)", c.Command.Name)
	}
	node := c.Args().First()
	if err := wire.ValidNodeID(node); err != nil {
		return "", nil, fmt.Errorf("node %q: %v; want the node's full swarm id (docker node ls)", node, err)
	}
	cl, err := agentsClient(c)
	return node, cl, err
}

func agentsCommand() *cli.Command {
	return &cli.Command{
		Name:      "agents",
		Usage:     "list the connected agents, one per node; revoke or allow a node's agent",
		ArgsUsage: " ",
		Description: "With no subcommand, lists the connected agents and when each one's certificate expires.\n" +
			"These commands need a Forge admin: the admin token (--admin-token-file) or an admin's personal token.",
		Flags:  agentsFlags(),
		Action: listAgents,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list the connected agents (what forge agents alone does)",
				ArgsUsage: " ",
				Flags:     agentsFlags(),
				Action:    listAgents,
			},
			{
				Name:      "revoke",
				Usage:     "close the node's session and refuse its certificates and joins until forge agents allow",
				ArgsUsage: "NODE",
				Flags:     agentsFlags(),
				Action: func(c *cli.Context) error {
					node, cl, err := agentNodeAndClient(c)
					if err != nil {
						return err
					}
					if err := cl.RevokeAgent(c.Context, node); err != nil {
						return agentsError(err, "revoke node "+node)
					}
					fmt.Fprintf(c.App.Writer, "revoked node %s: its session is closed and its certificates refused\n", node)
					return nil
				},
			},
			{
				Name:      "allow",
				Usage:     "lift the node's revocation; its agent joins again with the join token",
				ArgsUsage: "NODE",
				Flags:     agentsFlags(),
				Action: func(c *cli.Context) error {
					node, cl, err := agentNodeAndClient(c)
					if err != nil {
						return err
					}
					was, err := cl.AllowAgent(c.Context, node)
					if err != nil {
						return agentsError(err, "allow node "+node)
					}
					if !was {
						fmt.Fprintf(c.App.Writer, "node %s was not revoked: nothing changed\n", node)
						return nil
					}
					fmt.Fprintf(c.App.Writer, "allowed node %s: it must join again with the join token\n", node)
					return nil
				},
			},
		},
	}
}

func listAgents(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("agents takes no arguments but a subcommand: list, revoke NODE or allow NODE (got %q)", c.Args().First())
	}
	cl, err := agentsClient(c)
	if err != nil {
		return err
	}
	as, err := cl.Agents(c.Context)
	if err != nil {
		return agentsError(err, "list agents")
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tHOSTNAME\tAGENT\tENGINE\tADDRESS\tCONNECTED\tCERT EXPIRES")
	for _, a := range as {
		expires := "-"
		if !a.CertExpires.IsZero() {
			expires = a.CertExpires.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.NodeID, a.Hostname, a.AgentVersion, a.EngineVersion, a.Address,
			a.ConnectedSince.Local().Format(time.DateTime), expires)
	}
	return tw.Flush()
}
