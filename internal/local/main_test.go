package local

import (
	"os"
	"testing"

	"github.com/forge-ci/forge/internal/dockertest"
)

func TestMain(m *testing.M) { os.Exit(dockertest.Main(m)) }
