// Package local is `forge run`: one build of a folder on this machine,
// through the real path. A coordinator and an agent run in this process
// and talk over mutual TLS and yamux on loopback with certificates made
// for this run; the build's service is pinned to this node.
package local

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/client"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/wire"
)

// Options describe one local run.
type Options struct {
	Dir      string // the repository folder, holding .forge.yml
	Action   string // default "execute"
	Docker   *client.Client
	Executor []byte // the forgexec binary
	Stdout   io.Writer
	Stderr   io.Writer
	Logger   *slog.Logger      // the coordinator's and agent's log; nil discards it
	Labels   map[string]string // extra labels on the service (tests)
	// Started, when set, is told the build's id once it is queued.
	Started func(buildID string)
}

// ExitInterrupted is the exit code of a run cancelled by the user.
const ExitInterrupted = 130

// Run runs the build and returns the exit code for the process: the
// build's exit code, 130 when ctx was cancelled (Ctrl-C), 1 for other
// errors. ctx ending cancels the build and removes its service.
func Run(ctx context.Context, o Options) (int, error) {
	if o.Action == "" {
		o.Action = config.DefaultAction
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	cfgPath := filepath.Join(o.Dir, ".forge.yml")
	raw, err := os.ReadFile(cfgPath)
	if errors.Is(err, fs.ErrNotExist) {
		return 1, fmt.Errorf("no .forge.yml in %s: Forge reads the build (image and commands) from it; see the README's .forge.yml reference", o.Dir)
	}
	if err != nil {
		return 1, err
	}
	cfg, err := config.Parse(cfgPath, raw)
	if err != nil {
		return 1, err
	}
	if len(cfg.Actions[o.Action]) == 0 {
		return 1, fmt.Errorf("--action %s: %s defines no such action (it has: %s)", o.Action, cfgPath, strings.Join(actions(cfg), ", "))
	}
	if names := cfg.SecretsFor(o.Action); len(names) > 0 {
		return 1, fmt.Errorf("%s: action %s needs secrets (%s), which forge run cannot give: a coordinator keeps them (forge secrets set) for its builds",
			cfgPath, o.Action, strings.Join(names, ", "))
	}

	// The source first: a folder that cannot be read fails before any
	// service exists.
	src, err := packSource(o.Dir)
	if err != nil {
		return 1, err
	}
	defer src.remove()

	pki, err := newPKI()
	if err != nil {
		return 1, err
	}
	data, err := os.MkdirTemp("", "forge-run-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(data)
	setup, cancelSetup := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSetup()
	srv, err := daemon.New(setup, daemon.Config{
		TLS: wire.ServerConfig(pki.ca.Pool(), pki.coordinator), DataDir: data, Executor: o.Executor,
		Logger: o.Logger.With("side", "coordinator"),
		// The data folder goes with the run: a cache saved there would
		// never be restored.
		Bounds: daemon.Bounds{CacheSize: -1},
	}, o.Docker)
	if err != nil {
		if errors.Is(err, coordinator.ErrNotManager) {
			return 1, fmt.Errorf("forge run needs Docker in swarm mode, since every build is a swarm service: run `docker swarm init --advertise-addr 127.0.0.1` (one machine) and try again")
		}
		return 1, err
	}
	agentCert, err := pki.issue(wire.IssueRequest{Role: wire.RoleAgent, Name: "forge-run-agent", Node: srv.LocalNode})
	if err != nil {
		srv.Close()
		return 1, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return 1, err
	}

	// The coordinator and the agent stop when this function returns, in
	// that order of need: the build is final (or its service removed)
	// before either goes.
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopBG(); wg.Wait() }()
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(bg, daemon.Listeners{Agents: ln}); err != nil {
			o.Logger.Error("coordinator", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		err := agent.Run(bg, agent.Config{
			Coordinator: ln.Addr().String(), TLS: wire.ClientConfig(pki.ca.Pool(), agentCert, "127.0.0.1"),
			Docker: o.Docker, Logger: o.Logger.With("side", "agent"), MaxBackoff: time.Second,
		})
		if err != nil {
			o.Logger.Error("agent", "err", err)
		}
	}()
	actx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	err = srv.Agents.WaitAgent(actx, srv.LocalNode)
	cancelWait()
	if err != nil {
		return 1, fmt.Errorf("the in-process agent did not connect: %w", err)
	}

	b, err := srv.Builds.Submit(ctx, coordinator.Request{
		Subject: coordinator.Subject{Owner: "local", Repo: repoName(o.Dir), Branch: "local", SHA: src.sha,
			Ref: "local", Action: o.Action, Trigger: "run"},
		Config: cfg, ConfigText: string(raw), Source: src.open, Node: srv.LocalNode, Labels: o.Labels,
	})
	if err != nil {
		return 1, err
	}
	if o.Started != nil {
		o.Started(b.ID)
	}
	fmt.Fprintf(o.Stderr, "forge: build %s of %s (%s) in %s\n", b.ID, o.Dir, o.Action, cfg.Image)

	// The log, live, until the exit is recorded or the build ends without
	// one.
	logCtx, stopLog := context.WithCancel(context.Background())
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		srv.Logs.Follow(logCtx, b.ID, o.Stdout, true)
	}()
	final, err := srv.Builds.Wait(ctx, b.ID)
	interrupted := false
	if err != nil && ctx.Err() != nil {
		interrupted = true
		fmt.Fprintf(o.Stderr, "forge: interrupted: cancelling build %s\n", b.ID)
		srv.Builds.Cancel(context.Background(), b.ID, "cancelled (interrupted)")
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		final, err = srv.Builds.Wait(wctx, b.ID)
		wcancel()
	}
	// Whatever output was stored is shown before the verdict.
	select {
	case <-logDone:
	case <-time.After(2 * time.Second):
	}
	stopLog()
	<-logDone
	if err != nil {
		return 1, err
	}
	return verdict(o.Stderr, final, interrupted), nil
}

func verdict(w io.Writer, b *coordinator.Build, interrupted bool) int {
	switch {
	case b.State == coordinator.Success:
		fmt.Fprintf(w, "forge: build %s passed\n", b.ID)
		return 0
	case interrupted:
		fmt.Fprintf(w, "forge: build %s cancelled\n", b.ID)
		return ExitInterrupted
	case b.State == coordinator.Failure:
		fmt.Fprintf(w, "forge: build %s failed: %s\n", b.ID, b.Reason)
		return *b.ExitCode
	default:
		fmt.Fprintf(w, "forge: build %s error: %s\n", b.ID, b.Reason)
		if b.ExitCode != nil && *b.ExitCode != 0 {
			return *b.ExitCode
		}
		return 1
	}
}

func actions(cfg *config.Config) []string {
	var out []string
	for a := range cfg.Actions {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

func repoName(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "local"
	}
	if n := filepath.Base(abs); n != "/" && n != "." {
		return n
	}
	return "local"
}

// pki is this run's throw-away CA and the coordinator's certificate; the
// agent's names the node, known once the engine has said which it is.
type pki struct {
	ca          *wire.CA
	coordinator tls.Certificate
}

func newPKI() (*pki, error) {
	ca, err := wire.NewCA("forge run", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	p := &pki{ca: ca}
	p.coordinator, err = p.issue(wire.IssueRequest{Role: wire.RoleCoordinator, Name: "forge-run-coordinator", Hosts: []string{"127.0.0.1"}})
	return p, err
}

func (p *pki) issue(req wire.IssueRequest) (tls.Certificate, error) {
	req.ValidFor = 24 * time.Hour
	c, k, err := p.ca.Issue(req)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(c, k)
}

// source is the folder packed as a tar in a temporary file: its size must
// be known before it is sent, and its digest names the "commit".
type source struct {
	path string
	size int64
	sha  string
}

func (s *source) remove() { os.Remove(s.path) }

func (s *source) open(ctx context.Context) (io.ReadCloser, int64, error) {
	f, err := os.Open(s.path)
	return f, s.size, err
}

// packSource writes dir as a tar (without .git), regular files, folders
// and symbolic links only.
func packSource(dir string) (*source, error) {
	f, err := os.CreateTemp("", "forge-source-*.tar")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(f, h))
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case info.Mode().IsRegular(), info.IsDir():
		default:
			return nil // sockets, fifos, devices
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			if _, err := io.CopyN(tw, in, info.Size()); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	var size int64
	if err == nil {
		size, err = f.Seek(0, io.SeekCurrent)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	return &source{path: f.Name(), size: size, sha: hex.EncodeToString(h.Sum(nil))[:40]}, nil
}
