package redact

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
)

// The secrets each case hides, and what must stay readable around them.
func TestString(t *testing.T) {
	for _, c := range []struct {
		in, keep string
		secret   []string
	}{
		{`download o/r@abc: Get "https://codeload.github.com/o/r/legacy.tar.gz/abc?token=AABBCCDD": dial tcp: timeout`,
			`Get "https://codeload.github.com/o/r/legacy.tar.gz/abc?[redacted]": dial tcp: timeout`, []string{"AABBCCDD", "token="}},
		{`GET https://api.example.com/x?a=1&access_token=s3cr3t&b=2 failed`, `GET https://api.example.com/x?[redacted] failed`, []string{"s3cr3t"}},
		{`clone https://x-access-token:ghs_0123456789abcdefghijklmn@github.com/o/r.git`, `clone https://[redacted]@github.com/o/r.git`, []string{"ghs_0123", "x-access-token"}},
		{`Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig rejected`, `Bearer [redacted] rejected`, []string{"eyJhbGci"}},
		{`token ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123 is bad`, `token [redacted] is bad`, []string{"ghp_ABCD"}},
		{`password=hunter22; retry`, `password=[redacted]; retry`, []string{"hunter22"}},
		{`client_secret: "abc123def"`, `client_secret: "[redacted]`, []string{"abc123def"}},
		{`github_pat_11ABCDEFG0123456789_abcdefghijklmnop leaked`, `[redacted] leaked`, []string{"github_pat_"}},
	} {
		got := String(c.in)
		for _, s := range c.secret {
			if strings.Contains(got, s) {
				t.Errorf("String(%q) = %q: still holds %q", c.in, got, s)
			}
		}
		if !strings.Contains(got, c.keep) {
			t.Errorf("String(%q) = %q, want it to contain %q", c.in, got, c.keep)
		}
	}
	for _, plain := range []string{
		"exit code 2",
		"swarm rejected the task: No such image: golang:1.22",
		"superseded by abc1234",
		"timed out after 30m0s",
		"no agent on node 3f9a within 30s",
		"see https://forge.example.com/builds/20261130T120000-abcdef",
		"installation token verification failed",
	} {
		if got := String(plain); got != plain {
			t.Errorf("String(%q) = %q: changed text with no secret", plain, got)
		}
	}
}

// A real *url.Error, as http.Client.Do returns it for a signed link.
func TestErrorOfURLError(t *testing.T) {
	err := fmt.Errorf("download o/r: %w", &url.Error{Op: "Get", URL: "https://codeload.example/o/r/tar.gz/main?token=XYZSECRET", Err: errors.New("EOF")})
	if got := Error(err); strings.Contains(got, "XYZSECRET") || !strings.Contains(got, "codeload.example/o/r/tar.gz/main") {
		t.Errorf("Error = %q", got)
	}
	if Error(nil) != "" {
		t.Error("Error(nil) is not empty")
	}
}

func TestHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(Handler(slog.NewTextHandler(&buf, nil))).With("link", "https://h/x?token=WITHSECRET")
	log.Error("get https://h/y?sig=MSGSECRET failed",
		"err", errors.New("Get \"https://h/z?token=ERRSECRET\": EOF"),
		"url", &url.URL{Scheme: "https", Host: "h", Path: "/p", RawQuery: "token=STRSECRET"},
		slog.Group("req", "auth", "Bearer abcdefghijGROUPSECRET"),
		"build", "20261130T120000-abcdef")
	out := buf.String()
	for _, s := range []string{"WITHSECRET", "MSGSECRET", "ERRSECRET", "STRSECRET", "GROUPSECRET"} {
		if strings.Contains(out, s) {
			t.Errorf("log holds %s:\n%s", s, out)
		}
	}
	if !strings.Contains(out, "build=20261130T120000-abcdef") || !strings.Contains(out, "https://h/p?[redacted]") {
		t.Errorf("log lost what is not secret:\n%s", out)
	}
}
