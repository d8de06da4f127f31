// Package coordinator is Forge's coordinator: it turns build requests into
// one-task swarm services, learns from its agents where each task landed,
// has that node's agent start the build, and keeps the record and log of
// every build (DESIGN §2, §3, §6).
package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// Docker is the part of the manager's Engine API the coordinator uses,
// through the manager's local socket. *client.Client satisfies it.
type Docker interface {
	Swarm
	SwarmNodes
	Info(ctx context.Context) (system.Info, error)
}

// Config is the coordinator's configuration (the flags of `forge
// coordinator`, already loaded).
type Config struct {
	// TLS is the agent listener's configuration (wire.ServerConfig).
	TLS *tls.Config
	// Session tunes yamux; nil takes wire's defaults.
	Session *wire.SessionConfig
	// DataDir holds the database and the logs.
	DataDir string
	// Executor is the forgexec binary sent to agents.
	Executor []byte
	// AllowPorts lets configs publish ports.
	AllowPorts bool
	Logger     *slog.Logger
	// Manager settings; zero values take the manager's defaults.
	LandTimeout, AgentWait time.Duration
}

// Server is a whole coordinator: store, logs, agent server, build manager
// and HTTP API.
type Server struct {
	Store     *store.Store
	Logs      *LogStore
	Agents    *AgentServer
	Manager   *Manager
	Metrics   *Metrics
	API       *API
	LocalNode string // the swarm node the coordinator runs on

	log       *slog.Logger
	closeOnce sync.Once
	closeErr  error
}

// New checks that the engine is a swarm manager and assembles a
// coordinator. Close releases it if Serve is never called.
func New(ctx context.Context, cfg Config, docker Docker) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("coordinator: no TLS configuration for the agent listener")
	}
	if len(cfg.Executor) == 0 {
		return nil, errors.New("coordinator: no executor (forgexec) binary")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	info, err := docker.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("coordinator: docker info: %w", err)
	}
	if !info.Swarm.ControlAvailable {
		return nil, fmt.Errorf("coordinator: %w (swarm is %s); run `docker swarm init` (on one machine: docker swarm init --advertise-addr 127.0.0.1)", ErrNotManager, orInactive(string(info.Swarm.LocalNodeState)))
	}
	exe, err := NewExecutor(cfg.Executor)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("coordinator: data folder: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "forge.db"))
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	instance, err := instanceID(cfg.DataDir)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	s := &Server{Store: st, Logs: &LogStore{Dir: filepath.Join(cfg.DataDir, "logs")}, LocalNode: info.Swarm.NodeID, log: log}
	s.Agents = &AgentServer{TLS: cfg.TLS, Session: cfg.Session, Logs: s.Logs, Log: log.With("part", "agents"),
		Verify: &SwarmVerifier{Docker: docker, LocalNodeID: info.Swarm.NodeID}}
	s.Manager = &Manager{Swarm: docker, Store: st, Logs: s.Logs, Agents: s.Agents, Executor: exe, Instance: instance,
		Log: log.With("part", "builds"), AllowPorts: cfg.AllowPorts, LandTimeout: cfg.LandTimeout, AgentWait: cfg.AgentWait}
	s.Agents.OnLanded = s.Manager.Landed
	s.Agents.OnConnect = func(a AgentInfo) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := st.AgentConnected(ctx, store.AgentSeen{NodeID: a.NodeID, Hostname: a.Hostname, AgentVersion: a.AgentVersion,
			EngineVersion: a.EngineVersion, Address: a.Address, LastSeen: a.ConnectedSince})
		if err != nil {
			log.Warn("record agent", "node", a.NodeID, "err", err)
		}
	}
	s.Metrics = NewMetrics(st, s.Agents)
	s.Manager.OnDispatch = func(d time.Duration) { s.Metrics.Dispatch.Observe(d.Seconds()) }
	s.API = &API{Agents: s.Agents, Store: st, Logs: s.Logs, Manager: s.Manager, Metrics: s.Metrics}
	return s, nil
}

// instanceID reads the coordinator's instance id from the data folder,
// making one on first start: it survives restarts with the data.
func instanceID(dir string) (string, error) {
	path := filepath.Join(dir, "instance")
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		return string(b), nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	id := newSessionID()
	return id, os.WriteFile(path, []byte(id), 0o600)
}

// ErrNotManager: the coordinator's engine is not a swarm manager.
var ErrNotManager = errors.New("this Docker engine is not a swarm manager")

func orInactive(s string) string {
	if s == "" {
		return "inactive"
	}
	return s
}

// Serve recovers the builds a previous run left in swarm, then serves
// agents on agentLn and HTTP on httpLn (nil: no HTTP) until ctx ends. It
// closes the server when it returns. Builds keep running in swarm.
func (s *Server) Serve(ctx context.Context, httpLn, agentLn net.Listener) error {
	defer s.Close()
	if err := s.Manager.Recover(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- s.Agents.Serve(ctx, agentLn)
		cancel()
	}()
	if httpLn != nil {
		srv := &http.Server{Handler: s.API.Handler(), ReadHeaderTimeout: 10 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := srv.Serve(httpLn)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errs <- err
			cancel()
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close() // followers of live logs do not end by themselves
			}
		}()
	}
	s.log.Info("coordinator serving", "agents", agentLn.Addr().String(), "http", addrOf(httpLn), "node", s.LocalNode)
	<-ctx.Done()
	s.Manager.Close()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// Close releases the store and the log files.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.Manager.Close()
		s.closeErr = errors.Join(s.Logs.Close(), s.Store.Close())
	})
	return s.closeErr
}
