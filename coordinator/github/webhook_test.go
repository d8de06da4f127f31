package github

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator/store"
)

const payloadDir = "../../../shared/testdata/github-webhooks"

var testSecret = []byte("test secret")

// memDeliveries is an in-memory DeliveryStore.
type memDeliveries struct {
	mu     sync.Mutex
	seen   map[string]string
	bodies map[string]bool
}

func (m *memDeliveries) RecordDeliveryBody(ctx context.Context, id, event, body string, at time.Time) (store.Seen, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == nil {
		m.seen, m.bodies = map[string]string{}, map[string]bool{}
	}
	if _, ok := m.seen[id]; ok {
		return store.SeenID, nil
	}
	if m.bodies[body] {
		return store.SeenBody, nil
	}
	m.seen[id], m.bodies[body] = event, true
	return store.SeenFirst, nil
}

// The coordinator's store is a DeliveryStore.
var _ DeliveryStore = (*store.Store)(nil)

func newWebhook(size int) *Webhook {
	return &Webhook{Secret: testSecret, Deliveries: &memDeliveries{}, Queue: NewQueue(size)}
}

var deliveryN atomic.Int64

// post sends body to h signed as GitHub would, with a new delivery id
// unless one is given.
func post(h http.Handler, event string, body []byte, delivery string) *httptest.ResponseRecorder {
	if delivery == "" {
		delivery = fmt.Sprintf("delivery-%d", deliveryN.Add(1))
	}
	r := httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader(string(body)))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-GitHub-Event", event)
	r.Header.Set("X-GitHub-Delivery", delivery)
	r.Header.Set("X-Hub-Signature-256", Sign(testSecret, body))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func readPayload(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(payloadDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignatureTestVector(t *testing.T) {
	// GitHub's documented example
	// (docs.github.com, "Validating webhook deliveries").
	secret, body := []byte("It's a Secret to Everybody"), []byte("Hello, World!")
	const want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	if got := Sign(secret, body); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
	h := http.Header{}
	h.Set("X-Hub-Signature-256", want)
	if why := checkSignature(secret, h, body); why != "" {
		t.Errorf("the documented signature is refused: %s", why)
	}
	h.Set("X-Hub-Signature-256", strings.ToUpper(want[:7])+want[7:])
	if why := checkSignature(secret, h, body); why == "" {
		t.Error("a signature without the sha256= prefix is accepted")
	}
}

// expectation is what the handler does with one payload file.
type expectation struct {
	code   int
	kind   Kind // "" = no event queued
	inst   int64
	sha    string
	branch string
	fork   bool
}

const (
	prSHA   = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
	pushSHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
)

var payloadTable = map[string]expectation{
	"installation.created.json":                              {code: 200},
	"ping.json":                                              {code: 200},
	"ping.with-app_id.json":                                  {code: 200},
	"ping.with-organization.json":                            {code: 200},
	"pull_request.assigned.json":                             {code: 200},
	"pull_request.assigned.with-organization.json":           {code: 200},
	"pull_request.closed.json":                               {code: 202, kind: KindPullRequestClosed, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.closed.with-organization.json":             {code: 202, kind: KindPullRequestClosed, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.converted_to_draft.json":                   {code: 200},
	"pull_request.converted_to_draft.with-installation.json": {code: 200},
	"pull_request.converted_to_draft.with-organization.json": {code: 200},
	"pull_request.labeled.json":                              {code: 200},
	"pull_request.labeled.with-organization.json":            {code: 200},
	"pull_request.locked.json":                               {code: 200},
	"pull_request.locked.with-organization.json":             {code: 200},
	"pull_request.opened.json":                               {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.opened.with-null-body.json":                {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.opened.with-organization.json":             {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.ready_for_review.json":                     {code: 202, kind: KindPullRequest, inst: 0, sha: prSHA, branch: "changes"},
	"pull_request.ready_for_review.with-installation.json":   {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.ready_for_review.with-organization.json":   {code: 202, kind: KindPullRequest, inst: 0, sha: prSHA, branch: "changes"},
	"pull_request.reopened.json":                             {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.reopened.with-organization.json":           {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.review_request_removed.json":               {code: 200},
	"pull_request.review_requested.json":                     {code: 200},
	"pull_request.synchronize.json":                          {code: 202, kind: KindPullRequest, inst: 1, sha: prSHA, branch: "changes"},
	"pull_request.unassigned.json":                           {code: 200},
	"pull_request.unassigned.with-organization.json":         {code: 200},
	"pull_request.unlabeled.json":                            {code: 200},
	"pull_request.unlabeled.with-organization.json":          {code: 200},
	"pull_request.unlocked.json":                             {code: 200},
	"pull_request.unlocked.with-organization.json":           {code: 200},
	"push.1.json":                          {code: 200}, // tag deleted
	"push.json":                            {code: 200}, // tag deleted
	"push.with-installation.json":          {code: 200}, // tag deleted
	"push.with-organization.json":          {code: 200}, // tag deleted
	"push.with-new-branch.json":            {code: 202, kind: KindPush, inst: 1, sha: pushSHA, branch: "master"},
	"push.with-no-username-committer.json": {code: 202, kind: KindPush, inst: 1, sha: pushSHA, branch: "master"},
}

// TestEveryPayload sends every example payload through the handler, signed,
// and checks the answer and the event queued.
func TestEveryPayload(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(payloadDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no payloads in %s: %v", payloadDir, err)
	}
	seen := map[string]bool{}
	for _, path := range files {
		name := filepath.Base(path)
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			want, ok := payloadTable[name]
			if !ok {
				t.Fatalf("%s is not in the expectation table", name)
			}
			event, _, _ := strings.Cut(name, ".")
			h := newWebhook(4)
			w := post(h, event, readPayload(t, name), "")
			if w.Code != want.code {
				t.Fatalf("code %d (%q), want %d", w.Code, w.Body.String(), want.code)
			}
			if want.kind == "" {
				if h.Queue.Len() != 0 {
					t.Fatalf("an event was queued")
				}
				return
			}
			if h.Queue.Len() != 1 {
				t.Fatalf("%d events queued, want 1", h.Queue.Len())
			}
			ev, _ := h.Queue.take(context.Background())
			wantEv := Event{Name: event, Kind: want.kind, Owner: "Codertocat", Repo: "Hello-World",
				Installation: want.inst, SHA: want.sha, Branch: want.branch, Fork: want.fork, Public: true}
			if event == "pull_request" {
				wantEv.PullRequest, wantEv.CommitCount = 2, 1
				wantEv.Action = ev.Action
				wantEv.Author, wantEv.Association = "Codertocat", "OWNER" // every example's
				wantEv.BaseBranch = "master"
			} else {
				wantEv.CommitCount = 1
			}
			wantEv.DefaultBranch = "master" // every example's repository.default_branch
			ev.Delivery = ""
			if ev != wantEv {
				t.Errorf("event\n got %+v\nwant %+v", ev, wantEv)
			}
		})
	}
	var missing []string
	for name := range payloadTable {
		if !seen[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("table entries without a file: %v", missing)
	}
}

func TestForkDetection(t *testing.T) {
	body := readPayload(t, "pull_request.opened.json")
	s := strings.Replace(string(body), `"full_name": "Codertocat/Hello-World"`, `"full_name": "Forker/Hello-World"`, 1)
	if s == string(body) {
		t.Fatal("payload layout changed: head repo full_name not found")
	}
	ev, work, _, err := Decode("pull_request", []byte(s))
	if err != nil || !work {
		t.Fatalf("Decode: work=%v err=%v", work, err)
	}
	if !ev.Fork {
		t.Error("a pull request from another repository is not a fork")
	}
}

// A repository is public only when the payload says so: private, or not
// said, keeps its builds from people who may not read it.
func TestVisibility(t *testing.T) {
	for _, name := range []string{"pull_request.opened.json", "push.with-new-branch.json"} {
		body := string(readPayload(t, name))
		for _, c := range []struct {
			name, body string
			public     bool
		}{
			{"as sent", body, true},
			{"private", strings.ReplaceAll(body, `"private": false`, `"private": true`), false},
			{"not said", strings.ReplaceAll(body, `"private": false,`, ``), false},
		} {
			if c.body == body && !c.public {
				t.Fatalf("%s: payload layout changed: no \"private\": false", name)
			}
			ev, work, _, err := Decode(strings.TrimSuffix(strings.SplitN(name, ".", 2)[0], ".json"), []byte(c.body))
			if err != nil || !work {
				t.Fatalf("%s %s: Decode: work=%v err=%v", name, c.name, work, err)
			}
			if ev.Public != c.public {
				t.Errorf("%s %s: Public = %v, want %v", name, c.name, ev.Public, c.public)
			}
		}
	}
}

func TestRefusals(t *testing.T) {
	body := readPayload(t, "pull_request.opened.json")
	send := func(mod func(r *http.Request)) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader(string(body)))
		r.Header.Set("X-GitHub-Event", "pull_request")
		r.Header.Set("X-GitHub-Delivery", "d-1")
		r.Header.Set("X-Hub-Signature-256", Sign(testSecret, body))
		mod(r)
		w := httptest.NewRecorder()
		h := newWebhook(4)
		h.ServeHTTP(w, r)
		if h.Queue.Len() != 0 && w.Code != 202 {
			t.Errorf("a refused request queued an event")
		}
		return w
	}
	for _, c := range []struct {
		name string
		code int
		mod  func(r *http.Request)
	}{
		{"unsigned", 401, func(r *http.Request) { r.Header.Del("X-Hub-Signature-256") }},
		{"sha1 only", 401, func(r *http.Request) {
			r.Header.Del("X-Hub-Signature-256")
			r.Header.Set("X-Hub-Signature", "sha1=0123456789abcdef0123456789abcdef01234567")
		}},
		{"wrong secret", 401, func(r *http.Request) { r.Header.Set("X-Hub-Signature-256", Sign([]byte("other"), body)) }},
		{"not hex", 401, func(r *http.Request) { r.Header.Set("X-Hub-Signature-256", "sha256=zz") }},
		{"short", 401, func(r *http.Request) { r.Header.Set("X-Hub-Signature-256", "sha256=abcd") }},
		{"sha1 prefix", 401, func(r *http.Request) {
			r.Header.Set("X-Hub-Signature-256", strings.Replace(Sign(testSecret, body), "sha256=", "sha1=", 1))
		}},
		{"no event", 400, func(r *http.Request) { r.Header.Del("X-GitHub-Event") }},
		{"no delivery", 400, func(r *http.Request) { r.Header.Del("X-GitHub-Delivery") }},
		{"declared too large", 413, func(r *http.Request) { r.ContentLength = MaxBody + 1 }},
		{"GET", 405, func(r *http.Request) { r.Method = http.MethodGet }},
		{"signed", 202, func(r *http.Request) {}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := send(c.mod)
			if w.Code != c.code {
				t.Errorf("code %d (%q), want %d", w.Code, w.Body.String(), c.code)
			}
			if c.code == 401 && strings.TrimSpace(w.Body.String()) == "" {
				t.Error("401 without a reason")
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	for _, c := range []struct{ event, body string }{
		{"pull_request", `{"action": "opened", "number": 2`}, // cut JSON
		{"ping", `not json`}, // any event
		{"pull_request", `{"action": "opened", "number": "x"}`}, // wrong type
		{"pull_request", `{"action": "opened"}`},                // no repository
		{"push", `{"ref": "refs/heads/main", "after": "../../x", "repository": {"name": "r", "owner": {"login": "o"}}}`},
		{"pull_request", `{"action": "opened", "number": 1, "repository": {"name": "../x", "owner": {"login": "o"}}}`},
	} {
		h := newWebhook(4)
		if w := post(h, c.event, []byte(c.body), ""); w.Code != 400 || h.Queue.Len() != 0 {
			t.Errorf("%s %s: code %d (%q), queued %d; want 400 and nothing", c.event, c.body, w.Code, w.Body.String(), h.Queue.Len())
		}
	}
}

// countingReader is an endless stream of zeros that counts what was read.
type countingReader struct{ n int64 }

func (c *countingReader) Read(p []byte) (int, error) {
	clear(p)
	c.n += int64(len(p))
	return len(p), nil
}

func TestBodyOverLimitNotReadWhole(t *testing.T) {
	src := &countingReader{}
	r := httptest.NewRequest(http.MethodPost, "/webhook", io.LimitReader(src, 4*MaxBody))
	r.ContentLength = -1 // chunked: the size is not declared
	r.Header.Set("X-GitHub-Event", "push")
	r.Header.Set("X-GitHub-Delivery", "big")
	r.Header.Set("X-Hub-Signature-256", "sha256=00")
	w := httptest.NewRecorder()
	newWebhook(4).ServeHTTP(w, r)
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("code %d, want 413", w.Code)
	}
	if src.n > MaxBody+1<<20 {
		t.Errorf("read %d bytes of an over-size body; the cap is %d", src.n, MaxBody)
	}
}

func TestRedelivery(t *testing.T) {
	h := newWebhook(4)
	body := readPayload(t, "pull_request.synchronize.json")
	if w := post(h, "pull_request", body, "same"); w.Code != 202 {
		t.Fatalf("first delivery: %d", w.Code)
	}
	w := post(h, "pull_request", body, "same")
	if w.Code != 200 || !strings.Contains(w.Body.String(), "duplicate delivery") {
		t.Errorf("redelivery: %d %q", w.Code, w.Body.String())
	}
	if h.Queue.Len() != 1 {
		t.Errorf("%d events queued, want 1", h.Queue.Len())
	}
}

// TestRedeliveryWithStore runs the same through the coordinator's SQLite
// store.
func TestRedeliveryWithStore(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := &Webhook{Secret: testSecret, Deliveries: st, Queue: NewQueue(4)}
	body := readPayload(t, "pull_request.opened.json")
	codes := []int{post(h, "pull_request", body, "x-1").Code, post(h, "pull_request", body, "x-1").Code}
	if codes[0] != 202 || codes[1] != 200 || h.Queue.Len() != 1 {
		t.Errorf("codes %v, queued %d; want [202 200] and 1", codes, h.Queue.Len())
	}
}

func TestFullQueue(t *testing.T) {
	h := newWebhook(1)
	body := readPayload(t, "pull_request.opened.json")
	if w := post(h, "pull_request", body, "a"); w.Code != 202 {
		t.Fatalf("first: %d", w.Code)
	}
	other := readPayload(t, "pull_request.synchronize.json")
	w := post(h, "pull_request", other, "b")
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("full queue: %d, Retry-After %q; want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	// Nothing to do is still answered while the queue is full.
	if w := post(h, "ping", readPayload(t, "ping.json"), ""); w.Code != 200 {
		t.Errorf("ping with a full queue: %d", w.Code)
	}
	// The refused delivery was not recorded: once there is room, its
	// redelivery is taken.
	h.Queue.take(context.Background())
	if w := post(h, "pull_request", other, "b"); w.Code != 202 {
		t.Errorf("redelivery after a 503: %d (%q), want 202", w.Code, w.Body.String())
	}
}

func TestStoppedQueueRefuses(t *testing.T) {
	h := newWebhook(4)
	h.Queue.stop()
	if w := post(h, "pull_request", readPayload(t, "pull_request.opened.json"), ""); w.Code != 503 {
		t.Errorf("stopped queue: %d, want 503", w.Code)
	}
}

type failingDeliveries struct{}

func (failingDeliveries) RecordDeliveryBody(context.Context, string, string, string, time.Time) (store.Seen, error) {
	return 0, fmt.Errorf("disk full")
}

func TestDeliveryStoreFailure(t *testing.T) {
	h := &Webhook{Secret: testSecret, Deliveries: failingDeliveries{}, Queue: NewQueue(1)}
	body := readPayload(t, "pull_request.opened.json")
	if w := post(h, "pull_request", body, ""); w.Code != 500 {
		t.Errorf("code %d, want 500", w.Code)
	}
	// The slot was given back.
	h.Deliveries = &memDeliveries{}
	if w := post(h, "pull_request", body, ""); w.Code != 202 {
		t.Errorf("after a store failure: %d, want 202", w.Code)
	}
}

func FuzzWebhook(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(payloadDir, "*.json"))
	checks, _ := filepath.Glob(filepath.Join(checkPayloadDir, "*.json"))
	for _, p := range append(files, checks...) {
		b, err := os.ReadFile(p)
		if err == nil {
			event, _, _ := strings.Cut(filepath.Base(p), ".")
			f.Add(event, b)
		}
	}
	f.Add("push", []byte(`{"ref":"refs/heads/x","after":"`+pushSHA+`","repository":{"name":"r","owner":{"name":"o"}}}`))
	f.Fuzz(func(t *testing.T, event string, body []byte) {
		if event == "" {
			return
		}
		h := newWebhook(2)
		w := post(h, event, body, "")
		switch w.Code {
		case 200, 400:
			if h.Queue.Len() != 0 {
				t.Fatalf("code %d but an event was queued", w.Code)
			}
		case 202:
			ev, _ := h.Queue.take(context.Background())
			if checkRepo(ev.Owner, ev.Repo) != nil || (ev.Kind != KindPullRequestClosed && !shaRE.MatchString(ev.SHA)) ||
				(ev.Kind == KindRerunCheckRun && ev.CheckRunID <= 0) {
				t.Fatalf("queued an event with unchecked values: %+v", ev)
			}
		default:
			t.Fatalf("code %d (%q)", w.Code, w.Body.String())
		}
	})
}

// A signed body captured and sent again under a new delivery id builds
// nothing: answered 200, nothing queued, nothing more recorded; GitHub's
// redelivery (the same id) is answered as before.
func TestReplayWithNewDeliveryID(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := &Webhook{Secret: testSecret, Deliveries: st, Queue: NewQueue(4)}
	body := readPayload(t, "pull_request.opened.json")
	if w := post(h, "pull_request", body, "orig"); w.Code != 202 {
		t.Fatalf("first delivery: %d %q", w.Code, w.Body.String())
	}
	for _, id := range []string{"replay-1", "replay-2"} {
		w := post(h, "pull_request", body, id)
		if w.Code != 200 || !strings.Contains(w.Body.String(), "already received") {
			t.Errorf("replay as %s: %d %q, want 200 already received", id, w.Code, w.Body.String())
		}
	}
	if w := post(h, "pull_request", body, "orig"); w.Code != 200 || !strings.Contains(w.Body.String(), "duplicate delivery") {
		t.Errorf("redelivery: %d %q, want 200 duplicate delivery", w.Code, w.Body.String())
	}
	if n := h.Queue.Len(); n != 1 {
		t.Errorf("%d events queued, want 1", n)
	}
	var n int
	if err := st.DB().QueryRow(`SELECT count(*) FROM deliveries`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d deliveries recorded (%v), want 1: a replay records nothing", n, err)
	}
	// One byte more is another body: it is taken.
	if w := post(h, "pull_request", append(body, ' '), "new"); w.Code != 202 {
		t.Errorf("another body: %d %q, want 202", w.Code, w.Body.String())
	}
}

// stallReader gives nothing until released: a sender that is slow to
// send its body.
type stallReader struct{ release chan struct{} }

func (s stallReader) Read(p []byte) (int, error) {
	<-s.release
	return 0, io.EOF
}

// At most MaxReading bodies are read at once; one more is answered 503
// with Retry-After, and nothing is recorded or queued for it. Once the
// readers finish, deliveries are taken again.
func TestBodiesReadAtOnceBounded(t *testing.T) {
	h := newWebhook(8)
	h.MaxReading = 2
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 2 {
		r := httptest.NewRequest(http.MethodPost, "/webhook", stallReader{release})
		r.ContentLength = -1
		r.Header.Set("X-GitHub-Event", "ping")
		r.Header.Set("X-GitHub-Delivery", fmt.Sprintf("slow-%d", i))
		wg.Go(func() { h.ServeHTTP(httptest.NewRecorder(), r) })
	}
	body := readPayload(t, "pull_request.opened.json")
	deadline := time.Now().Add(10 * time.Second)
	for len(h.readingSlots()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the slow readers never started")
		}
		time.Sleep(time.Millisecond)
	}
	w := post(h, "pull_request", body, "third")
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("a third body at once: %d, Retry-After %q; want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if h.Queue.Len() != 0 || len(h.Deliveries.(*memDeliveries).seen) != 0 {
		t.Errorf("the refused delivery left %d queued, %d recorded", h.Queue.Len(), len(h.Deliveries.(*memDeliveries).seen))
	}
	close(release)
	wg.Wait()
	if w := post(h, "pull_request", body, "third"); w.Code != 202 {
		t.Errorf("after the readers finished: %d %q, want 202", w.Code, w.Body.String())
	}
}
