package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestDeployFlags: every flag of forge deploy up and down reads a FORGE_
// variable, as make up's settings always have; the ones make passes
// unprefixed (VERSION, PURGE) are read too.
func TestDeployFlags(t *testing.T) {
	var deploy *cli.Command
	for _, c := range newApp().Commands {
		if c.Name == "deploy" {
			deploy = c
		}
	}
	if deploy == nil {
		t.Fatal("no deploy command")
	}
	want := map[string][]string{
		"up":   {"FORGE_STACK", "FORGE_STATE_DIR", "FORGE_UP_TIMEOUT", "FORGE_HTTP_PORT", "FORGE_PUBLIC_URL", "FORGE_GITHUB_APP_ID", "FORGE_GITHUB_KEY_FILE", "FORGE_GITHUB_API", "FORGE_GITHUB_CLIENT_ID", "FORGE_GITHUB_CLIENT_SECRET_FILE", "FORGE_GITHUB_WEB", "FORGE_REGISTRY", "FORGE_USER", "FORGE_AGENT_USER", "VERSION"},
		"down": {"FORGE_STACK", "FORGE_STATE_DIR", "FORGE_DOWN_TIMEOUT", "FORGE_HTTP_PORT", "PURGE"},
	}
	for _, sub := range deploy.Subcommands {
		read := map[string]bool{}
		for _, f := range sub.Flags {
			vars := f.(interface{ GetEnvVars() []string }).GetEnvVars()
			if len(vars) == 0 || !strings.HasPrefix(vars[0], "FORGE_") {
				t.Errorf("deploy %s --%s reads %q", sub.Name, f.Names()[0], vars)
			}
			for _, v := range vars {
				read[v] = true
			}
		}
		for _, v := range want[sub.Name] {
			if !read[v] {
				t.Errorf("deploy %s reads no flag from %s", sub.Name, v)
			}
		}
		delete(want, sub.Name)
	}
	if len(want) > 0 {
		t.Errorf("missing subcommands: %v", want)
	}
}

func TestDeployTakesNoArguments(t *testing.T) {
	for _, sub := range []string{"up", "down"} {
		if _, err := run(t, "deploy", sub, "extra"); err == nil || !strings.Contains(err.Error(), "takes no arguments") {
			t.Errorf("deploy %s extra: %v", sub, err)
		}
	}
}
