package deploy

// The tests: the stack files (stack_test.go), up and down against fakes
// (up_test.go, down_test.go), and make up / make down on the real engine
// (deploy_engine_test.go, and cluster_test.go on three nodes).

import (
	"os"
	"testing"

	"github.com/forge-ci/forge/internal/dockertest"
)

func TestMain(m *testing.M) { os.Exit(dockertest.Main(m)) }
