package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/forge-ci/forge/wire"
)

// controlWriteTimeout bounds each frame the loop writes on the control
// stream, so a coordinator that stops reading it cannot hold the loop.
const controlWriteTimeout = wire.RequestTimeout

// session is one session with the coordinator. Its loop (serve, in Run's
// goroutine) owns the state below and alone writes the control stream;
// the goroutines that serve the session (request handlers, log pumps, the
// readers of the control stream and of new streams, the certificate's
// renewal) own no state: they send events to the loop.
type session struct {
	id        string
	ws        *wire.Session
	ctlStream *wire.Stream
	ctl       *wire.Codec
	// events goes from the session's goroutines to its loop. It is not
	// buffered: the loop reads it until the last of them has ended, so a
	// send never waits long.
	events chan event
	wg     sync.WaitGroup // the session's goroutines

	// Only the loop touches these.
	pumping   map[string]bool // builds with a log pump in this session
	launching map[string]bool // containers a Launch is injecting into
}

func newSession(id string, ws *wire.Session, ctl *wire.Stream, codec *wire.Codec) *session {
	return &session{id: id, ws: ws, ctlStream: ctl, ctl: codec, events: make(chan event),
		pumping: map[string]bool{}, launching: map[string]bool{}}
}

// An event is what a goroutine of the session tells its loop: claim,
// launched or pumped.
type event interface{ isEvent() }

// claim asks for the right to launch into a container. The loop answers
// on granted (buffered) false while another Launch holds it.
type claim struct {
	containerID string
	granted     chan bool
}

// launched gives a claimed container back; build is set when the Launch
// started it, and its log pump is then due.
type launched struct {
	containerID string
	build       *heldBuild
}

// pumped says a build's log pump has ended; done when the coordinator has
// finished with the build, which is then forgotten.
type pumped struct {
	buildID string
	done    bool
}

func (claim) isEvent()    {}
func (launched) isEvent() {}
func (pumped) isEvent()   {}

// claim asks the loop for container id: false while another Launch holds
// it. A granted claim is given back with a launched event.
func (s *session) claim(id string) bool {
	granted := make(chan bool, 1)
	s.events <- claim{containerID: id, granted: granted}
	return <-granted
}

// heldBuild is a build the agent holds (PROTOCOL.md §5.4).
type heldBuild struct {
	buildID, containerID string
}

// serve runs one session after Welcome (PROTOCOL.md §6.1) until it dies or
// ctx ends. Then it stops every goroutine of the session, still applying
// their events, and returns once the last has ended.
func (a *Agent) serve(ctx context.Context, s *session) error {
	ctx, cancel := context.WithCancelCause(ctx)
	err := a.loop(ctx, cancel, s)
	cancel(err)
	s.ws.Close()
	a.drain(ctx, s)
	if a.cfg.OnSession != nil {
		a.cfg.OnSession("")
	}
	return err
}

// loop is the session's life (PROTOCOL.md §6.1): Holding, then one select
// over the session's end, the engine's Landed events and the events of the
// session's goroutines. It returns why the session ended.
func (a *Agent) loop(ctx context.Context, cancel context.CancelCauseFunc, s *session) error {
	held, err := a.heldBuilds(ctx)
	if err != nil {
		return fmt.Errorf("list held builds: %w", err)
	}
	report := &wire.Holding{Builds: []wire.Held{}}
	for _, h := range held {
		report.Builds = append(report.Builds, h.wire)
	}
	if err := a.sendControl(s, report); err != nil {
		return err
	}
	if a.cfg.OnSession != nil {
		a.cfg.OnSession(s.id)
	}
	for _, h := range held {
		a.startPump(ctx, s, h.build)
	}

	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		// It only swaps the agent's certificate, under its own lock:
		// no state of the session's.
		a.renewals(ctx, s)
	}()
	go func() {
		defer s.wg.Done()
		// Nothing more comes on the control stream (PROTOCOL.md §6.1):
		// reading it notices its end, which ends the session.
		_, err := s.ctl.Recv()
		cancel(fmt.Errorf("control stream ended: %w", err))
	}()
	go func() {
		defer s.wg.Done()
		a.accept(ctx, cancel, s)
	}()

	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.ws.Done():
			return errors.New("session closed")
		case l := <-a.landed:
			if err := a.sendControl(s, &l); err != nil {
				return err
			}
		case ev := <-s.events:
			a.apply(ctx, s, ev)
		}
	}
}

// drain applies the events of the session's goroutines until the last of
// them has ended; ctx is cancelled and the session closed, so they end
// soon. A build acknowledged just as the session died is still forgotten.
func (a *Agent) drain(ctx context.Context, s *session) {
	ended := make(chan struct{})
	go func() { s.wg.Wait(); close(ended) }() // owner: drain, which waits for it
	for {
		select {
		case ev := <-s.events:
			a.apply(ctx, s, ev)
		case <-ended:
			return
		}
	}
}

// apply changes the session's state by one event; only the loop calls it.
func (a *Agent) apply(ctx context.Context, s *session, ev event) {
	switch ev := ev.(type) {
	case claim:
		busy := s.launching[ev.containerID]
		s.launching[ev.containerID] = true
		ev.granted <- !busy
	case launched:
		delete(s.launching, ev.containerID)
		if ev.build != nil {
			a.startPump(ctx, s, *ev.build)
		}
	case pumped:
		delete(s.pumping, ev.buildID)
		if ev.done {
			a.acked[ev.buildID] = true
			a.saves.drop(ev.buildID)
		}
	}
}

// sendControl writes msg on the control stream; only the loop calls it.
func (a *Agent) sendControl(s *session, msg wire.Message) error {
	s.ctlStream.SetWriteDeadline(time.Now().Add(controlWriteTimeout))
	if err := s.ctl.Send(msg); err != nil {
		return fmt.Errorf("control stream: %w", err)
	}
	return nil
}

// accept serves each stream the coordinator opens in a goroutine of the
// session, until the session ends (PROTOCOL.md §3).
func (a *Agent) accept(ctx context.Context, cancel context.CancelCauseFunc, s *session) {
	for {
		st, err := s.ws.Accept(ctx)
		if err != nil {
			cancel(fmt.Errorf("accept: %w", err))
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			a.handle(ctx, s, st)
		}()
	}
}

// startPump starts b's log pump unless it has one in this session, the
// coordinator has finished with it, or the session is ending; only the
// loop calls it.
func (a *Agent) startPump(ctx context.Context, s *session, b heldBuild) {
	if ctx.Err() != nil || s.pumping[b.buildID] || a.acked[b.buildID] {
		return
	}
	s.pumping[b.buildID] = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.events <- pumped{buildID: b.buildID, done: a.report(ctx, s, b)}
	}()
}

// report pumps b's log until the coordinator has finished with the build
// (true) or the session ends (false), attaching again after a back-off
// when a log stream fails (PROTOCOL.md §6.4).
func (a *Agent) report(ctx context.Context, s *session, b heldBuild) bool {
	bo := backoff{min: 500 * time.Millisecond, max: 10 * time.Second}
	for {
		done, err := a.pump(ctx, s, b)
		if done {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := bo.next()
		a.log.Warn("log stream ended; attaching again", "build", b.buildID, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

type held struct {
	build heldBuild
	wire  wire.Held
}

// heldBuilds lists the held builds (PROTOCOL.md §5.4) from the engine,
// whose record survives an agent restart: the forge containers that have
// run, less those the coordinator has finished with. It runs in Run's
// goroutine, before the loop.
func (a *Agent) heldBuilds(ctx context.Context) ([]held, error) {
	cs, err := a.cfg.Docker.ContainerList(ctx, containerListAll(LabelBuild))
	if err != nil {
		return nil, err
	}
	present := map[string]bool{}
	for _, c := range cs {
		present[c.Labels[LabelBuild]] = true
	}
	for id := range a.acked {
		if !present[id] {
			delete(a.acked, id) // its container is gone: it cannot be reported again
		}
	}
	var out []held
	for _, c := range cs {
		id := c.Labels[LabelBuild]
		if a.acked[id] {
			continue
		}
		in, err := a.cfg.Docker.ContainerInspect(ctx, c.ID)
		if err != nil || in.State == nil || in.State.StartedAt == "" || in.State.StartedAt == neverStarted {
			continue // gone since the list, or never started by us
		}
		h := held{build: heldBuild{buildID: id, containerID: c.ID}, wire: wire.Held{BuildID: id, ContainerID: c.ID, State: wire.StateRunning}}
		if !in.State.Running {
			code := in.State.ExitCode
			h.wire.State, h.wire.ExitCode = wire.StateExited, &code
		}
		out = append(out, h)
	}
	return out, nil
}
