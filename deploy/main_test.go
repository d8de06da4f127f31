// Package deploy holds the tests of Forge's swarm deployment: the stack
// files (stack_test.go) and make up / make down on the real engine
// (deploy_engine_test.go). The deployment itself is shell and YAML.
package deploy

import (
	"os"
	"testing"

	"github.com/forge-ci/forge/internal/dockertest"
)

func TestMain(m *testing.M) { os.Exit(dockertest.Main(m)) }
