package web

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator/store"
)

// forge_logs_bytes is read when scraped; a failing read fails the scrape
// visibly rather than showing 0.
func TestLogsBytesMetric(t *testing.T) {
	st, err := store.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m := NewMetrics(st, fakeAgents{})
	var n int64 = 12345
	var fail error
	if err := m.LogsBytes(func() (int64, error) { return n, fail }); err != nil {
		t.Fatal(err)
	}
	if err := m.LogsBytes(func() (int64, error) { return 0, nil }); err == nil {
		t.Error("a second forge_logs_bytes was registered")
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	scrape := func() (int, string) {
		resp, err := srv.Client().Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := scrape(); code != 200 || !strings.Contains(body, "forge_logs_bytes 12345\n") {
		t.Fatalf("scrape: %d, body lacks forge_logs_bytes 12345:\n%s", code, body)
	}
	fail = errors.New("cannot read the logs folder")
	if code, body := scrape(); code != 500 || !strings.Contains(body, "cannot read the logs folder") {
		t.Errorf("scrape with a failing read: %d %q, want 500 naming the error", code, body)
	}
}
