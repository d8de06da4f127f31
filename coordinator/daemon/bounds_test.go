package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/artifacts"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// A retention pass deletes the logs and artifacts of final builds
// finished before --retain, keeps their rows, keeps the logs and artifacts
// of recent and unfinished builds, and forgets deliveries older than 7
// days.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lg := &logs.Store{Dir: filepath.Join(dir, "logs")}
	defer lg.Close()
	arts := &artifacts.Store{Dir: filepath.Join(dir, "artifacts")}
	now := time.Now()
	long := now.Add(-100 * 24 * time.Hour)
	for _, b := range []*coordinator.Build{
		{ID: "old", State: coordinator.Success, Created: long, Finished: long},
		{ID: "oldqueued", State: coordinator.Queued, Created: long},
		{ID: "recent", State: coordinator.Failure, Created: now.Add(-time.Hour), Finished: now.Add(-time.Hour)},
	} {
		if err := st.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
		if err := lg.Create(b.ID); err != nil {
			t.Fatal(err)
		}
		if err := lg.Log(ctx, b.ID, &wire.Log{Seq: 1, Stream: "stdout", Data: []byte("x\n")}); err != nil {
			t.Fatal(err)
		}
		if b.State.Final() {
			if err := lg.Exit(ctx, b.ID, &wire.Exit{LastSeq: 1}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := arts.Put(b.ID, bytes.NewReader(oneFileTar(t, "out.txt", b.ID)), 1<<20); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(dir, "artifacts", b.ID, "index.json"), long, long)
	}
	lg.Close() // nothing runs: every log may be looked at
	for _, f := range []string{"old.log", "old.exit", "oldqueued.log"} {
		if err := os.Chtimes(filepath.Join(dir, "logs", f), long, long); err != nil {
			t.Fatal(err)
		}
	}
	for id, at := range map[string]time.Time{"d-old": now.Add(-8 * 24 * time.Hour), "d-new": now.Add(-6 * 24 * time.Hour)} {
		if _, err := st.RecordDeliveryBody(ctx, id, "push", id, at); err != nil {
			t.Fatal(err)
		}
	}
	c := &Coordinator{Store: st, Logs: lg, Artifacts: arts, bounds: Bounds{Retain: 90 * 24 * time.Hour}, log: slog.New(slog.DiscardHandler)}
	c.prune(ctx, now)

	for id, kept := range map[string]bool{"old": false, "oldqueued": true, "recent": true} {
		if list, err := arts.List(id); err != nil || (len(list) == 1) != kept {
			t.Errorf("artifacts of %s: %+v, %v; want kept %v", id, list, err, kept)
		}
	}

	if _, err := lg.Exited("old"); !errors.Is(err, coordinator.ErrUnknownBuild) {
		t.Errorf("old build's log: %v, want deleted", err)
	}
	if _, err := st.Build(ctx, "old"); err != nil {
		t.Errorf("old build's row: %v, want kept", err)
	}
	for _, id := range []string{"oldqueued", "recent"} {
		if _, err := os.Stat(filepath.Join(dir, "logs", id+".log")); err != nil {
			t.Errorf("log of %s: %v, want kept", id, err)
		}
	}
	var ids []string
	rows, err := st.DB().Query(`SELECT id FROM deliveries`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	if strings.Join(ids, ",") != "d-new" {
		t.Errorf("deliveries after prune: %v, want [d-new]", ids)
	}

	// --retain 0 keeps every log.
	c.bounds.Retain = 0
	for _, f := range []string{"recent.log", "recent.exit"} {
		os.Chtimes(filepath.Join(dir, "logs", f), long, long)
	}
	c.prune(ctx, now)
	if _, err := os.Stat(filepath.Join(dir, "logs", "recent.log")); err != nil {
		t.Errorf("--retain 0 deleted a log: %v", err)
	}
}

// The HTTP server refuses oversized headers, and has read, header and
// idle time-outs but no write time-out (a followed log is one long
// response).
func TestHTTPServerBounds(t *testing.T) {
	srv := httpServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	if srv.WriteTimeout != 0 || srv.ReadTimeout == 0 || srv.IdleTimeout == 0 || srv.ReadHeaderTimeout == 0 {
		t.Fatalf("time-outs: %+v", srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-done
	}()
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 100<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB header: %d, want 431", resp.StatusCode)
	}
}

func oneFileTar(t *testing.T, name, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
	tw.Write([]byte(body))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
