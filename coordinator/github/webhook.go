package github

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gh "github.com/google/go-github/v62/github"

	"github.com/forge-ci/forge/coordinator/store"
)

// MaxBody is the largest webhook body accepted: GitHub's own cap on
// payloads (DESIGN §2.1).
const MaxBody = 25 << 20

// DeliveryStore remembers webhook deliveries; *store.Store is one.
type DeliveryStore interface {
	// RecordDeliveryBody records the delivery by its id and the SHA-256 of
	// its body (hex) and says, atomically, whether either was seen before.
	RecordDeliveryBody(ctx context.Context, id, event, bodySHA256 string, at time.Time) (store.Seen, error)
}

// DefaultMaxReading is how many webhook bodies are read at once when
// Webhook.MaxReading is 0.
const DefaultMaxReading = 8

// Kind is what an Event asks Forge to do.
type Kind string

const (
	// KindPullRequest builds a pull request's head (opened, reopened,
	// synchronize, ready_for_review).
	KindPullRequest Kind = "pull_request"
	// KindPullRequestClosed cancels a pull request's builds.
	KindPullRequestClosed Kind = "pull_request_closed"
	// KindPush builds a pushed branch when .forge.yml maps it to an
	// action (on.push).
	KindPush Kind = "push"
	// KindRerunCheckRun re-runs the build of a check run (check_run
	// rerequested: GitHub's "Re-run").
	KindRerunCheckRun Kind = "rerun_check_run"
	// KindRerunCheckSuite re-runs the builds of a commit (check_suite
	// rerequested: "Re-run all checks").
	KindRerunCheckSuite Kind = "rerun_check_suite"
)

// Event is a webhook delivery reduced to the values Forge acts on. It
// holds no URL: every API call is built from these values and the
// configured API base, never from links in the payload.
type Event struct {
	Delivery string // X-GitHub-Delivery
	Name     string // X-GitHub-Event
	Action   string // the payload's action, "" for push
	Kind     Kind

	Owner, Repo  string
	Installation int64 // 0: the payload had none; look it up
	PullRequest  int   // 0 for pushes
	SHA          string
	Branch       string // the PR's head branch, or the pushed branch
	CommitCount  int
	// Fork: the pull request comes from another repository (its head
	// repository's full name differs from the base's, or is gone).
	Fork bool
	// Public: the payload says the repository is not private. A payload
	// that does not say counts as private.
	Public bool
	// Author and Association: the pull request's user and its
	// author_association (OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, NONE...);
	// empty for pushes.
	Author, Association string
	// Of a re-run: the check run (KindRerunCheckRun), the app that made
	// the check run or suite, and who asked (the payload's sender).
	CheckRunID int64
	App        int64
	Sender     string
	// BaseBranch is a pull request's base branch; DefaultBranch the
	// repository's default branch ("" when the payload does not say).
	BaseBranch, DefaultBranch string
}

// Queue carries events from the webhook handler to Forge's workers. It
// holds at most its size of events; a full queue makes the handler answer
// 503, so that the handler never waits.
type Queue struct {
	// slots is taken before the delivery is recorded and given back when
	// a worker takes the event, so a recorded delivery always finds room
	// in events.
	slots   chan struct{}
	events  chan Event
	stopped atomic.Bool
}

// DefaultQueueSize is the queue's size when NewQueue is given none.
const DefaultQueueSize = 256

// NewQueue returns a queue of size events (<= 0: DefaultQueueSize).
func NewQueue(size int) *Queue {
	if size <= 0 {
		size = DefaultQueueSize
	}
	return &Queue{slots: make(chan struct{}, size), events: make(chan Event, size)}
}

// Len is the number of events waiting.
func (q *Queue) Len() int { return len(q.events) }

func (q *Queue) reserve() bool {
	if q.stopped.Load() {
		return false
	}
	select {
	case q.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (q *Queue) unreserve() { <-q.slots }

// put never blocks: the caller holds a slot.
func (q *Queue) put(ev Event) { q.events <- ev }

// take returns the next event, or false once ctx ends.
func (q *Queue) take(ctx context.Context) (Event, bool) {
	select {
	case <-ctx.Done():
		return Event{}, false
	case ev := <-q.events:
		<-q.slots
		return ev, true
	}
}

// stop makes the queue refuse new events (the handler answers 503) and
// returns those still waiting.
func (q *Queue) stop() []Event {
	q.stopped.Store(true)
	var left []Event
	for {
		select {
		case ev := <-q.events:
			<-q.slots
			left = append(left, ev)
		default:
			return left
		}
	}
}

// Webhook serves POST /webhook (DESIGN §2.1, §3). It checks the
// signature, records the delivery, answers at once, and leaves the work
// (GitHub API calls, Submit) to Forge's workers through Queue.
//
// Answers: 202 work was queued; 200 nothing to do (ping, installation,
// other events and actions, a tag or deleted ref, a redelivery, a body
// already received under another delivery id: a replay); 400 malformed;
// 401 bad or missing signature; 413 too large; 503 the queue is full or
// MaxReading bodies are being read (with Retry-After; the delivery is not
// recorded, so a redelivery is taken); 500 the delivery could not be
// recorded.
//
// A push to a branch is answered 202 before .forge.yml is read: whether
// the branch maps to an action is known only from the config at the
// pushed commit, which is read by the worker, and GitHub's 10 s allows no
// API call in the answer. So 202 for a push means "taken for work", and
// the work may find nothing to build.
type Webhook struct {
	Secret     []byte
	Deliveries DeliveryStore
	Queue      *Queue
	Log        *slog.Logger
	// AppID, when set, is Forge's GitHub App: a re-run of another app's
	// check run or suite is nothing to do (200).
	AppID int64
	// Records, when set, tells whether Forge made the check run (or built
	// the commit) a re-run names: if not, it is nothing to do (200).
	Records Records
	// Now is the clock for recorded deliveries; nil is time.Now.
	Now func() time.Time
	// MaxReading bounds the bodies read at once (0: DefaultMaxReading),
	// so slow senders cannot hold many 25 MiB buffers.
	MaxReading int

	readingOnce sync.Once
	reading     chan struct{}
}

var _ http.Handler = (*Webhook)(nil)

func (h *Webhook) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		reply(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	// Refuse a declared size up front, and cap what is read whatever the
	// header says (chunked bodies have none).
	if r.ContentLength > MaxBody {
		reply(w, http.StatusRequestEntityTooLarge, "body over 25 MiB")
		return
	}
	reading := h.readingSlots()
	select {
	case reading <- struct{}{}:
		defer func() { <-reading }()
	default:
		h.log().Warn("webhook refused: too many bodies being read", "reading", cap(reading), "remote", r.RemoteAddr)
		w.Header().Set("Retry-After", "10")
		reply(w, http.StatusServiceUnavailable, "busy: too many webhook bodies being read, redeliver later")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			reply(w, http.StatusRequestEntityTooLarge, "body over 25 MiB")
			return
		}
		reply(w, http.StatusBadRequest, "cannot read the body")
		return
	}
	if why := checkSignature(h.Secret, r.Header, body); why != "" {
		h.log().Warn("webhook refused", "reason", why, "remote", r.RemoteAddr)
		reply(w, http.StatusUnauthorized, why)
		return
	}
	name, delivery := r.Header.Get("X-GitHub-Event"), r.Header.Get("X-GitHub-Delivery")
	if name == "" || delivery == "" {
		reply(w, http.StatusBadRequest, "missing X-GitHub-Event or X-GitHub-Delivery")
		return
	}
	if len(delivery) > 200 {
		reply(w, http.StatusBadRequest, "X-GitHub-Delivery is too long")
		return
	}
	if !json.Valid(body) {
		reply(w, http.StatusBadRequest, "malformed JSON")
		return
	}
	ev, work, note, err := Decode(name, body)
	if err != nil {
		h.log().Warn("webhook payload refused", "delivery", delivery, "event", name, "err", err)
		reply(w, http.StatusBadRequest, "malformed payload: "+err.Error())
		return
	}
	ev.Delivery = delivery
	log := h.log().With("delivery", delivery, "event", name, "action", ev.Action)
	if work {
		var err error
		if note, err = h.foreign(r.Context(), ev); err != nil {
			log.Error("look up the builds a re-run names", "err", err)
			reply(w, http.StatusInternalServerError, "cannot look up the builds to re-run")
			return
		}
		work = note == ""
	}

	// A queue place is reserved before the delivery is recorded: a full
	// queue then leaves no record behind, and GitHub's redelivery (or
	// the next attempt) is taken as new.
	if work && !h.Queue.reserve() {
		log.Warn("webhook queue full; delivery refused", "queued", h.Queue.Len())
		w.Header().Set("Retry-After", "30")
		reply(w, http.StatusServiceUnavailable, "busy: event queue full, redeliver later")
		return
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	rctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	sum := sha256.Sum256(body)
	seen, err := h.Deliveries.RecordDeliveryBody(rctx, delivery, name, hex.EncodeToString(sum[:]), now())
	cancel()
	if err != nil || seen != store.SeenFirst {
		if work {
			h.Queue.unreserve()
		}
		switch {
		case err != nil:
			log.Error("record webhook delivery", "err", err)
			reply(w, http.StatusInternalServerError, "cannot record the delivery")
		case seen == store.SeenID:
			log.Info("webhook redelivery ignored")
			reply(w, http.StatusOK, "duplicate delivery")
		default:
			// Signed by the secret but already received under another id:
			// a captured body sent again.
			log.Warn("webhook replay ignored: this body was already received under another delivery id", "remote", r.RemoteAddr)
			reply(w, http.StatusOK, "already received: the same body came under another delivery id; nothing is built")
		}
		return
	}
	if !work {
		log.Debug("webhook: nothing to do", "note", note)
		reply(w, http.StatusOK, note)
		return
	}
	h.Queue.put(ev)
	log.Info("webhook queued", "kind", ev.Kind, "repo", ev.Owner+"/"+ev.Repo, "pr", ev.PullRequest, "branch", ev.Branch, "sha", ev.SHA)
	reply(w, http.StatusAccepted, "queued")
}

// foreign says why a re-run event names nothing of Forge's ("" when it
// does, or is no re-run): a check run or suite of another app, a check run
// Forge did not make, a commit Forge never built.
func (h *Webhook) foreign(ctx context.Context, ev Event) (string, error) {
	if ev.Kind != KindRerunCheckRun && ev.Kind != KindRerunCheckSuite {
		return "", nil
	}
	if h.AppID != 0 && ev.App != h.AppID {
		return fmt.Sprintf("ignored: a re-run for another GitHub App (%d)", ev.App), nil
	}
	if h.Records == nil {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if ev.Kind == KindRerunCheckRun {
		_, err := h.Records.CheckRun(ctx, ev.Owner, ev.Repo, ev.CheckRunID)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Sprintf("ignored: Forge did not make check run %d", ev.CheckRunID), nil
		}
		return "", err
	}
	bs, err := h.Records.CommitBuilds(ctx, ev.Owner, ev.Repo, ev.SHA)
	if err == nil && len(bs) == 0 {
		return "ignored: Forge never built " + ev.SHA, nil
	}
	return "", err
}

// readingSlots is the semaphore of bodies being read (tests watch it).
func (h *Webhook) readingSlots() chan struct{} {
	h.readingOnce.Do(h.initReading)
	return h.reading
}

func (h *Webhook) initReading() {
	h.reading = make(chan struct{}, cmp.Or(h.MaxReading, DefaultMaxReading))
}

func reply(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

// checkSignature returns why the body's X-Hub-Signature-256 is not the
// HMAC-SHA256 of body under secret, or "" when it is. The SHA-1
// X-Hub-Signature is never accepted.
func checkSignature(secret []byte, hdr http.Header, body []byte) string {
	if len(secret) == 0 {
		return "no webhook secret configured" // never accept unsigned work
	}
	sig := hdr.Get("X-Hub-Signature-256")
	if sig == "" {
		if hdr.Get("X-Hub-Signature") != "" {
			return "X-Hub-Signature (SHA-1) is not accepted; X-Hub-Signature-256 is required"
		}
		return "missing X-Hub-Signature-256"
	}
	hexSig, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return "malformed X-Hub-Signature-256"
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil || len(got) != sha256.Size {
		return "malformed X-Hub-Signature-256"
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return "signature mismatch"
	}
	return ""
}

// Sign returns the X-Hub-Signature-256 value of body under secret, as
// GitHub computes it.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

var (
	// nameRE: GitHub owner and repository names. Checked because they
	// are put into API paths.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,100}$`)
	// shaRE: a full commit id, SHA-1 or SHA-256.
	shaRE     = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)
	zeroSHARE = regexp.MustCompile(`^0+$`)
)

// Decode reads a webhook payload of event name (X-GitHub-Event) with
// go-github's types. work says whether it is an Event for Forge's workers;
// otherwise note says why there is nothing to do. An error means a
// payload of a handled event that lacks what Forge needs.
func Decode(name string, body []byte) (ev Event, work bool, note string, err error) {
	ev.Name = name
	switch name {
	case "ping":
		return ev, false, "pong", nil
	case "installation", "installation_repositories":
		// Nothing to do: installation ids come with each event, or are
		// looked up, and tokens are made when needed.
		return ev, false, "ok", nil
	case "pull_request":
		p, err := gh.ParseWebHook(name, body)
		if err != nil {
			return ev, false, "", err
		}
		return decodePullRequest(ev, p.(*gh.PullRequestEvent))
	case "push":
		p, err := gh.ParseWebHook(name, body)
		if err != nil {
			return ev, false, "", err
		}
		return decodePush(ev, p.(*gh.PushEvent))
	case "check_run", "check_suite":
		return decodeCheck(ev, body)
	}
	return ev, false, "ignored: event " + name, nil
}

func decodePullRequest(ev Event, p *gh.PullRequestEvent) (Event, bool, string, error) {
	ev.Action = p.GetAction()
	switch ev.Action {
	case "opened", "reopened", "synchronize", "ready_for_review":
		ev.Kind = KindPullRequest
	case "closed":
		ev.Kind = KindPullRequestClosed
	default:
		return ev, false, "ignored: pull_request." + ev.Action, nil
	}
	ev.Owner, ev.Repo = p.GetRepo().GetOwner().GetLogin(), p.GetRepo().GetName()
	ev.Public = isPublic(p.GetRepo())
	ev.Installation = p.GetInstallation().GetID()
	ev.PullRequest = p.GetNumber()
	if ev.PullRequest == 0 {
		ev.PullRequest = p.GetPullRequest().GetNumber()
	}
	if err := checkRepo(ev.Owner, ev.Repo); err != nil {
		return ev, false, "", err
	}
	if ev.PullRequest <= 0 {
		return ev, false, "", errors.New("no pull request number")
	}
	pr := p.GetPullRequest()
	head := pr.GetHead()
	ev.SHA, ev.Branch, ev.CommitCount = head.GetSHA(), head.GetRef(), pr.GetCommits()
	// A head repository that is gone (a deleted fork) counts as a fork:
	// nothing says it was ours.
	headRepo, baseRepo := head.GetRepo().GetFullName(), pr.GetBase().GetRepo().GetFullName()
	if baseRepo == "" {
		baseRepo = ev.Owner + "/" + ev.Repo
	}
	ev.Fork = headRepo == "" || !strings.EqualFold(headRepo, baseRepo)
	ev.Author, ev.Association = pr.GetUser().GetLogin(), pr.GetAuthorAssociation()
	ev.BaseBranch, ev.DefaultBranch = pr.GetBase().GetRef(), p.GetRepo().GetDefaultBranch()
	if ev.Kind == KindPullRequest && !shaRE.MatchString(ev.SHA) {
		return ev, false, "", fmt.Errorf("head sha %q is not a commit id", ev.SHA)
	}
	return ev, true, "", nil
}

func decodePush(ev Event, p *gh.PushEvent) (Event, bool, string, error) {
	ev.Kind = KindPush
	ref, after := p.GetRef(), p.GetAfter()
	if p.GetDeleted() || zeroSHARE.MatchString(after) {
		return ev, false, "ignored: deleted ref " + ref, nil
	}
	branch, ok := strings.CutPrefix(ref, "refs/heads/")
	if !ok || branch == "" {
		return ev, false, "ignored: not a branch: " + ref, nil
	}
	repo := p.GetRepo()
	ev.Owner, ev.Repo = repo.GetOwner().GetLogin(), repo.GetName()
	ev.Public = repo != nil && repo.Private != nil && !*repo.Private
	if ev.Owner == "" {
		// Push payloads name the owner in both login and name;
		// older ones only in name.
		ev.Owner = repo.GetOwner().GetName()
	}
	if err := checkRepo(ev.Owner, ev.Repo); err != nil {
		return ev, false, "", err
	}
	if !shaRE.MatchString(after) {
		return ev, false, "", fmt.Errorf("after %q is not a commit id", after)
	}
	ev.Installation = p.GetInstallation().GetID()
	ev.SHA, ev.Branch, ev.CommitCount = after, branch, len(p.Commits)
	ev.DefaultBranch = repo.GetDefaultBranch()
	return ev, true, "", nil
}

func isPublic(r *gh.Repository) bool { return r != nil && r.Private != nil && !*r.Private }

func checkRepo(owner, repo string) error {
	for _, n := range []string{owner, repo} {
		if !nameRE.MatchString(n) || n == "." || n == ".." {
			return fmt.Errorf("repository %s is not a valid owner/name", strconv.Quote(owner+"/"+repo))
		}
	}
	return nil
}
