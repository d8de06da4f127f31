package github

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/internal/fakegithub"
	"github.com/forge-ci/forge/internal/fakegithub/fakegithubtest"
)

const repo = "Codertocat/Hello-World"

var goodTree = []fakegithub.Entry{
	{Name: "Codertocat-Hello-World-ec26c3e/", Type: tar.TypeDir},
	{Name: "Codertocat-Hello-World-ec26c3e/.forge.yml", Body: "image: busybox\nexecute: [\"true\"]\n"},
	{Name: "Codertocat-Hello-World-ec26c3e/src/", Type: tar.TypeDir},
	{Name: "Codertocat-Hello-World-ec26c3e/src/main.go", Body: "package main\n"},
	{Name: "Codertocat-Hello-World-ec26c3e/link", Type: tar.TypeSymlink, Link: "src/main.go"},
}

var goodTreeWant = map[string]string{
	".forge.yml":  "image: busybox\nexecute: [\"true\"]\n",
	"src/":        "/",
	"src/main.go": "package main\n",
	"link":        "-> src/main.go",
}

// newTestApp is an App on the fake, with retries fast enough for tests.
func newTestApp(t testing.TB, fake *fakegithubtest.Server) *App {
	t.Helper()
	app, err := NewApp(fakegithub.AppID, fakegithubtest.AppKeyPEM(t), fake.APIBase(), fake.Client())
	if err != nil {
		t.Fatal(err)
	}
	app.TempDir = t.TempDir()
	app.retry = retryPolicy{tries: 5, base: time.Millisecond, max: 10 * time.Millisecond, budget: 10 * time.Second, maxRetryAfter: 2 * time.Second}
	return app
}

// countRequests counts the fake's requests that start with prefix
// ("METHOD /path").
func countRequests(fake *fakegithubtest.Server, prefix string) int {
	n := 0
	for _, r := range fake.Requests() {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// readTar lists a plain tar: name -> body (or "-> link" for links, "/"
// for directories).
func readTar(t testing.TB, r io.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			out[h.Name] = "/"
		case tar.TypeSymlink, tar.TypeLink:
			out[h.Name] = "-> " + h.Linkname
		default:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = string(b)
		}
	}
}

func TestNewAppBases(t *testing.T) {
	pemKey := fakegithubtest.AppKeyPEM(t)
	for base, want := range map[string]string{
		"":                                "https://api.github.com/",
		"https://api.github.com":          "https://api.github.com/",
		"https://ghe.example.com/api/v3/": "https://ghe.example.com/api/v3/",
		"https://ghe.example.com":         "https://ghe.example.com/api/v3/",
	} {
		app, err := NewApp(1, pemKey, base, nil)
		if err != nil {
			t.Fatalf("%q: %v", base, err)
		}
		if app.BaseURL() != want {
			t.Errorf("base %q -> %q, want %q", base, app.BaseURL(), want)
		}
	}
	if _, err := NewApp(1, []byte("not a key"), "", nil); err == nil {
		t.Error("a bad key is accepted")
	}
	if _, err := NewApp(1, pemKey, "ftp://x/", nil); err == nil {
		t.Error("an ftp base is accepted")
	}
}

func TestInstallationLookup(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	id, err := app.Installation(context.Background(), "Codertocat", "Hello-World")
	if err != nil || id != 1 {
		t.Fatalf("Installation = %d, %v; want 1", id, err)
	}
	_, err = app.Installation(context.Background(), "someone", "else")
	if !errors.Is(err, ErrNotInstalled) {
		t.Errorf("unknown repository: %v, want ErrNotInstalled", err)
	}
}

func TestConfigAndTokenCache(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	ctx := context.Background()
	text := "image: busybox\nexecute:\n  - \"true\"\n"
	fake.SetFile(repo, prSHA, text)
	for range 5 {
		data, found, err := app.Config(ctx, 1, "Codertocat", "Hello-World", prSHA)
		if err != nil || !found || string(data) != text {
			t.Fatalf("Config = %q, %v, %v", data, found, err)
		}
	}
	data, found, err := app.Config(ctx, 1, "Codertocat", "Hello-World", pushSHA)
	if err != nil || found || data != nil {
		t.Errorf("absent file: %q, %v, %v; want not found, no error", data, found, err)
	}
	if n := fake.TokenCount(1); n != 1 {
		t.Errorf("%d token requests for 6 calls, want 1", n)
	}
	for _, r := range fake.Requests() {
		if !strings.Contains(r, " /api/v3/") {
			t.Errorf("request outside the API base: %s", r)
		}
	}
}

func TestConfigTooLarge(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	fake.SetFile(repo, prSHA, "image: x\n"+strings.Repeat("#", config.MaxSize))
	_, found, err := app.Config(context.Background(), 1, "Codertocat", "Hello-World", prSHA)
	var ce *config.Error
	if !found || !errors.As(err, &ce) {
		t.Fatalf("found=%v err=%v; want found with a *config.Error", found, err)
	}
}

func TestSource(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	fake.SetTarball(repo, prSHA, fakegithubtest.TarballEntries(t, goodTree...))
	path, size, err := app.Source(context.Background(), 1, "Codertocat", "Hello-World", prSHA, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != size {
		t.Errorf("size %d, file %d", size, len(b))
	}
	got := readTar(t, bytes.NewReader(b))
	if len(got) != len(goodTreeWant) {
		t.Errorf("entries %v, want %v", got, goodTreeWant)
	}
	for k, v := range goodTreeWant {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// Unknown commit: an error, no file left behind.
	if _, _, err := app.Source(context.Background(), 1, "Codertocat", "Hello-World", pushSHA, 0); err == nil {
		t.Error("a missing tarball gives no error")
	}
	if ents, _ := os.ReadDir(app.TempDir); len(ents) != 1 {
		t.Errorf("temp dir holds %d files, want only the good source", len(ents))
	}
}

func TestSourceCap(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	fake.SetTarball(repo, prSHA, fakegithubtest.TarballEntries(t, fakegithub.Entry{Name: "top/big", Body: strings.Repeat("x", 64<<10)}))
	_, _, err := app.Source(context.Background(), 1, "Codertocat", "Hello-World", prSHA, 32<<10)
	if !errors.Is(err, ErrSourceTooLarge) {
		t.Fatalf("err = %v, want ErrSourceTooLarge", err)
	}
	if ents, _ := os.ReadDir(app.TempDir); len(ents) != 0 {
		t.Errorf("a refused source left %d files", len(ents))
	}
}

func TestRetarRefuses(t *testing.T) {
	for name, entries := range map[string][]fakegithub.Entry{
		"dotdot":            {{Name: "top/", Type: tar.TypeDir}, {Name: "top/../../etc/passwd", Body: "x"}},
		"dotdot inside":     {{Name: "top/a/../../b", Body: "x"}},
		"absolute":          {{Name: "/etc/passwd", Body: "x"}},
		"two tops":          {{Name: "top/a", Body: "x"}, {Name: "other/b", Body: "y"}},
		"through symlink":   {{Name: "top/l", Type: tar.TypeSymlink, Link: "/etc"}, {Name: "top/l/passwd", Body: "x"}},
		"hardlink out":      {{Name: "top/h", Type: tar.TypeLink, Link: "../x"}},
		"replaces link":     {{Name: "top/l", Type: tar.TypeSymlink, Link: "/etc"}, {Name: "top/l/", Type: tar.TypeDir}},
		"hardlink via link": {{Name: "top/l", Type: tar.TypeSymlink, Link: "/etc"}, {Name: "top/h", Type: tar.TypeLink, Link: "top/l/passwd"}},
		"device":            {{Name: "top/dev", Type: tar.TypeChar}},
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := Retar(&out, bytes.NewReader(fakegithubtest.TarballEntries(t, entries...)), 1<<20)
			if !errors.Is(err, ErrUnsafeArchive) {
				t.Errorf("err = %v, want ErrUnsafeArchive", err)
			}
		})
	}
}

func TestRetarCaps(t *testing.T) {
	// A gzip bomb: little compressed, much written.
	tgz := fakegithubtest.TarballEntries(t, fakegithub.Entry{Name: "top/zeros", Body: strings.Repeat("\x00", 4<<20)})
	if int64(len(tgz)) > 1<<20 {
		t.Fatalf("test archive is %d bytes compressed", len(tgz))
	}
	_, err := Retar(&bytes.Buffer{}, bytes.NewReader(tgz), 1<<20)
	if !errors.Is(err, ErrSourceTooLarge) {
		t.Errorf("decompressed over the cap: %v, want ErrSourceTooLarge", err)
	}
	// The compressed download itself over the cap.
	_, err = Retar(&bytes.Buffer{}, bytes.NewReader(tgz), int64(len(tgz)/2))
	if !errors.Is(err, ErrSourceTooLarge) {
		t.Errorf("download over the cap: %v, want ErrSourceTooLarge", err)
	}
	// Not gzip at all.
	if _, err := Retar(&bytes.Buffer{}, strings.NewReader("plain"), 1<<20); err == nil || errors.Is(err, ErrSourceTooLarge) {
		t.Errorf("not gzip: %v", err)
	}
}

func TestSetStatusRetries(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	ctx := context.Background()

	fake.FailStatuses(2, "502")
	if err := app.SetStatus(ctx, 1, "Codertocat", "Hello-World", prSHA, "pending", "forge/execute", "queued", ""); err != nil {
		t.Fatalf("after two 502s: %v", err)
	}
	if n := countRequests(fake, "POST /api/v3/repos/Codertocat/Hello-World/statuses/"); n != 3 {
		t.Errorf("%d status requests, want 3", n)
	}

	fake.FailStatuses(100, "502")
	err := app.SetStatus(ctx, 1, "Codertocat", "Hello-World", prSHA, "pending", "forge/execute", "queued", "")
	if err == nil || !strings.Contains(err.Error(), "5 tries") {
		t.Errorf("always 502: %v, want an error after 5 tries", err)
	}

	fake.FailStatuses(1, "422")
	before := countRequests(fake, "POST ")
	if err := app.SetStatus(ctx, 1, "Codertocat", "Hello-World", prSHA, "bogus", "forge/execute", "", ""); err == nil {
		t.Error("a 422 gives no error")
	}
	if n := countRequests(fake, "POST ") - before; n != 1 {
		t.Errorf("a 422 was tried %d times, want once", n)
	}

	// A secondary rate limit is waited out (Retry-After: 1).
	fake.FailStatuses(1, "abuse")
	start := time.Now()
	if err := app.SetStatus(ctx, 1, "Codertocat", "Hello-World", prSHA, "success", "forge/execute", "passed", ""); err != nil {
		t.Fatalf("after a secondary rate limit: %v", err)
	}
	if time.Since(start) < time.Second {
		t.Errorf("Retry-After was not respected")
	}
	if n := fake.TokenCount(1); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
}

func TestSetStatusCutsDescription(t *testing.T) {
	fake := fakegithubtest.New(t)
	app := newTestApp(t, fake)
	long := strings.Repeat("é", 300)
	if err := app.SetStatus(context.Background(), 1, "Codertocat", "Hello-World", prSHA, "error", "forge/execute", long, "https://ci/builds/1"); err != nil {
		t.Fatal(err)
	}
	s := fake.NextStatus(t, 10*time.Second)
	if n := utf8.RuneCountInString(s.Description); n != MaxDescription || !strings.HasSuffix(s.Description, "…") {
		t.Errorf("description of %d characters: %q", n, s.Description)
	}
	if s.TargetURL != "https://ci/builds/1" || s.Token != "token ghs_1_1" {
		t.Errorf("status %+v", s)
	}
}

func TestRetryAfterParsing(t *testing.T) {
	if d := retryAfter("3"); d != 3*time.Second {
		t.Errorf("3 -> %v", d)
	}
	if d := retryAfter(time.Now().Add(time.Hour).UTC().Format(httpTimeFormat)); d < 59*time.Minute {
		t.Errorf("a date an hour ahead -> %v", d)
	}
	if d := retryAfter("soon"); d != 0 {
		t.Errorf("junk -> %v", d)
	}
}

const httpTimeFormat = "Mon, 02 Jan 2006 15:04:05 GMT"

// recordingTB notes the failures the fake reports instead of failing.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// TestForeignHostGuard proves the guard the other tests rely on: an App
// whose calls went anywhere but the fake (here api.github.com, as the
// payloads' URLs do) is caught.
func TestForeignHostGuard(t *testing.T) {
	rec := &recordingTB{TB: t}
	fake := fakegithubtest.New(rec)
	pemKey := fakegithubtest.AppKeyPEM(t)
	app, err := NewApp(fakegithub.AppID, pemKey, DefaultAPI, fake.Client())
	if err != nil {
		t.Fatal(err)
	}
	app.retry.tries = 1
	if _, _, err := app.Config(context.Background(), 1, "Codertocat", "Hello-World", prSHA); err == nil {
		t.Error("a call to api.github.com went through")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.errors) == 0 || !strings.Contains(rec.errors[0], "api.github.com") {
		t.Errorf("the guard reported %q", rec.errors)
	}
}

// TestConcurrentInstallations: many calls for two installations at once
// (run with -race): one token each.
func TestConcurrentInstallations(t *testing.T) {
	fake := fakegithubtest.New(t)
	fake.SetInstallation("Other/Repo", 2)
	fake.SetFile(repo, prSHA, "x")
	fake.SetFile("Other/Repo", prSHA, "y")
	app := newTestApp(t, fake)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			owner, name, inst, want := "Codertocat", "Hello-World", int64(1), "x"
			if i%2 == 1 {
				owner, name, inst, want = "Other", "Repo", 2, "y"
			}
			data, found, err := app.Config(context.Background(), inst, owner, name, prSHA)
			if err != nil || !found || string(data) != want {
				t.Errorf("Config(%d) = %q, %v, %v", inst, data, found, err)
			}
		})
	}
	wg.Wait()
	if a, b := fake.TokenCount(1), fake.TokenCount(2); a != 1 || b != 1 {
		t.Errorf("token requests %d and %d, want 1 each", a, b)
	}
}
