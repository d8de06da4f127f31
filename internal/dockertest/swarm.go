package dockertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// Swarm mode is shared by every test process on the machine (go test runs
// packages in parallel), so who may leave it is decided across processes:
// each process that uses swarm registers its pid in stateDir/users, and the
// marker stateDir/initialised records that the harness, not the machine's
// owner, turned swarm mode on. The last user to go leaves swarm mode only
// when the marker is there; a swarm that was active before the tests is
// never left.
var stateDir = filepath.Join(os.TempDir(), "forge-dockertest")

var (
	mainMu     sync.Mutex
	mainActive bool // Main is running this process's tests
	registered bool // this process is in stateDir/users
)

// Main runs the tests of a package that uses the engine and, afterwards,
// releases this process's hold on swarm mode. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(dockertest.Main(m)) }
func Main(m *testing.M) int {
	mainMu.Lock()
	mainActive = true
	mainMu.Unlock()
	code := m.Run()
	if err := release(); err != nil {
		fmt.Fprintf(os.Stderr, "dockertest: release swarm: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Swarm makes sure the engine is a swarm manager for as long as this
// process runs, initialising swarm mode on loopback when it is inactive.
func Swarm(t testing.TB, cli client.APIClient) {
	t.Helper()
	mainMu.Lock()
	defer mainMu.Unlock()
	if !mainActive {
		t.Fatal("dockertest.Swarm needs dockertest.Main in the package's TestMain, so swarm mode is left as it was found")
	}
	ctx := Context(t, 60*time.Second)
	unlock, err := lockState(ctx)
	if err != nil {
		t.Fatalf("swarm state lock: %v", err)
	}
	defer unlock()
	info, err := cli.Info(ctx)
	if err != nil {
		t.Fatalf("docker info: %v", err)
	}
	switch info.Swarm.LocalNodeState {
	case swarm.LocalNodeStateActive:
		if !info.Swarm.ControlAvailable {
			t.Fatalf("this engine is a swarm worker; the tests need a manager")
		}
	case swarm.LocalNodeStateInactive:
		_, err := cli.SwarmInit(ctx, swarm.InitRequest{
			ListenAddr:    "127.0.0.1:2377",
			AdvertiseAddr: "127.0.0.1",
		})
		if err != nil {
			t.Fatalf("swarm init: %v", err)
		}
		if err := os.WriteFile(filepath.Join(stateDir, "initialised"), []byte(time.Now().Format(time.RFC3339)), 0o644); err != nil {
			t.Fatalf("swarm init marker: %v", err)
		}
	default:
		t.Fatalf("swarm is %s (%s); fix the engine before running the tests", info.Swarm.LocalNodeState, info.Swarm.Error)
	}
	if !registered {
		if err := os.WriteFile(userFile(os.Getpid()), nil, 0o644); err != nil {
			t.Fatalf("register swarm user: %v", err)
		}
		registered = true
	}
}

func userFile(pid int) string {
	return filepath.Join(stateDir, "users", strconv.Itoa(pid))
}

// release drops this process's hold and leaves swarm mode when the harness
// turned it on and no live test process still uses it.
func release() error {
	mainMu.Lock()
	defer mainMu.Unlock()
	if !registered {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	unlock, err := lockState(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	registered = false
	if err := os.Remove(userFile(os.Getpid())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	users, err := os.ReadDir(filepath.Join(stateDir, "users"))
	if err != nil {
		return err
	}
	for _, u := range users {
		pid, err := strconv.Atoi(u.Name())
		if err == nil && alive(pid) {
			return nil // someone still needs swarm mode
		}
		os.Remove(filepath.Join(stateDir, "users", u.Name()))
	}
	marker := filepath.Join(stateDir, "initialised")
	if _, err := os.Stat(marker); err != nil {
		return nil // swarm mode was on before the tests: leave it on
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := cli.SwarmLeave(ctx, true); err != nil {
		return fmt.Errorf("swarm leave: %w", err)
	}
	return os.Remove(marker)
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// lockState takes an exclusive lock on the shared state folder.
func lockState(ctx context.Context) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Join(stateDir, "users"), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(stateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", f.Name(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
