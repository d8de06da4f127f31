package web

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/artifacts/artifactstest"
	"github.com/forge-ci/forge/internal/safetar"
)

// testArtifacts is build id's archive in these tests: a report, a binary
// file, a link to it, a file cut at the bound, and a name to escape.
func testArtifacts(t *testing.T, id string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		h    tar.Header
		body string
	}{
		{tar.Header{Name: "dist/report.txt", Typeflag: tar.TypeReg}, "report of " + id + "\n"},
		{tar.Header{Name: "dist/app.bin", Typeflag: tar.TypeReg}, "\x00\x01\xfe\xff <script>alert(1)</script>"},
		{tar.Header{Name: "dist/latest", Typeflag: tar.TypeSymlink, Linkname: "app.bin"}, ""},
		{tar.Header{Name: "big.bin", Typeflag: tar.TypeReg, PAXRecords: map[string]string{safetar.CutRecord: "2147483648"}}, "cut"},
		{tar.Header{Name: "odd #1?.txt", Typeflag: tar.TypeReg}, "odd"},
	} {
		h := f.h
		h.Size, h.Mode = int64(len(f.body)), 0o644
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f.body))
	}
	tw.Close()
	return buf.Bytes()
}

// TestArtifactsAccess: a build's artifacts follow its log's access: read
// gets them, byte for byte, as downloads; whoever may not read a private
// build gets the 404 of a build that does not exist, and none of its
// bytes.
func TestArtifactsAccess(t *testing.T) {
	priv := build("priv", coordinator.Success, time.Now())
	priv.Repo, priv.Public = "secret", false
	e := newAPIEnv(t, priv)
	e.gh.set("alice", "acme/secret", coordinator.Read)
	alice, carol := e.signIn("alice"), e.signIn("carol")

	status, hdr, body := e.call(alice, "GET", "/api/builds/priv/artifacts", "")
	var list []ArtifactView
	if status != 200 || json.Unmarshal([]byte(body), &list) != nil || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("list: %d %s", status, body)
	}
	want := []ArtifactView{{Path: "big.bin", Size: 3, OriginalSize: 2 << 30}, {Path: "dist/app.bin", Size: 30},
		{Path: "dist/latest", Link: "app.bin"}, {Path: "dist/report.txt", Size: 15}, {Path: "odd #1?.txt", Size: 3}}
	if len(list) != len(want) {
		t.Fatalf("list %+v", list)
	}
	for i := range want {
		if list[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, list[i], want[i])
		}
	}
	for path, want := range map[string]string{
		"dist/report.txt":   "report of priv\n",
		"dist/app.bin":      "\x00\x01\xfe\xff <script>alert(1)</script>",
		"dist/latest":       "\x00\x01\xfe\xff <script>alert(1)</script>",
		"odd%20%231%3F.txt": "odd",
		"dist%2Freport.txt": "report of priv\n",
		"big.bin":           "cut",
	} {
		status, hdr, body := e.call(alice, "GET", "/api/builds/priv/artifacts/"+path, "")
		if status != 200 || body != want {
			t.Errorf("%s: %d %q, want %q", path, status, body, want)
			continue
		}
		if hdr.Get("Content-Type") != "application/octet-stream" || !strings.HasPrefix(hdr.Get("Content-Disposition"), "attachment;") ||
			hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: served as %q, %q", path, hdr.Get("Content-Type"), hdr.Get("Content-Disposition"))
		}
	}
	if _, hdr, _ := e.call(alice, "GET", "/api/builds/priv/artifacts/big.bin", ""); hdr.Get("X-Forge-Original-Size") != "2147483648" {
		t.Errorf("a cut file's header: %q", hdr.Get("X-Forge-Original-Size"))
	}
	for _, path := range []string{"nope", "dist", "dist/", "../../forge.db", "..%2F..%2Fforge.db", "%2Fetc%2Fpasswd", ""} {
		if status, _, body := e.call(alice, "GET", "/api/builds/priv/artifacts/"+path, ""); status != 404 && status/100 != 3 || strings.Contains(body, "report of") {
			t.Errorf("%q: %d %q, want 404 (or the mux's redirect of a path with ..)", path, status, body)
		}
	}
	status, hdr, body = e.call(alice, "GET", "/api/builds/priv/artifacts.tar.gz", "")
	if status != 200 || hdr.Get("Content-Type") != "application/gzip" {
		t.Fatalf("tar.gz: %d %q", status, hdr.Get("Content-Type"))
	}
	got := artifactstest.Unpack(t, strings.NewReader(body))
	if len(got) != 5 || got["dist/report.txt"] != "report of priv\n" || got["dist/latest"] != "-> app.bin" {
		t.Errorf("tar.gz: %q", got)
	}

	// No access: the same 404 as a build that does not exist, for every
	// route, and nothing of the build in it.
	_, _, missing := e.call(carol, "GET", "/api/builds/nosuch/artifacts", "")
	for _, c := range []*caller{carol, nobody} {
		for _, path := range []string{"/api/builds/priv/artifacts", "/api/builds/priv/artifacts/dist/report.txt", "/api/builds/priv/artifacts.tar.gz"} {
			status, _, body := e.call(c, "GET", path, "")
			if status != http.StatusNotFound || strings.Contains(body, "report") || strings.Contains(body, "dist") ||
				strings.Replace(body, "priv", "nosuch", 1) != missing {
				t.Errorf("%s as %s: %d %q; want %q", path, c.name, status, body, missing)
			}
		}
	}
}

// TestBuildPageListsArtifacts: a final build's page links each artifact
// (names escaped, never markup) and the archive of all.
func TestBuildPageListsArtifacts(t *testing.T) {
	e := newAPIEnv(t, build("b1", coordinator.Success, time.Now()), build("b2", coordinator.Running, time.Now()))
	_, _, page := e.do("GET", "/builds/b1")
	for _, want := range []string{`href="/api/builds/b1/artifacts/dist/report.txt"`, `href="/api/builds/b1/artifacts/odd%20%231%3F.txt"`,
		`href="/api/builds/b1/artifacts.tar.gz"`, "(link to app.bin)", "(cut from 2GiB)", `<section id="artifacts" data-done="1" >`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s:\n%s", want, page)
		}
	}
	if strings.Contains(page, "<script>alert") {
		t.Error("an artifact's bytes are on the page")
	}
	_, _, page = e.do("GET", "/builds/b2")
	if strings.Contains(page, "dist/report.txt") || !strings.Contains(page, `<section id="artifacts"  hidden>`) {
		t.Errorf("a running build's page lists artifacts:\n%s", page)
	}
}
