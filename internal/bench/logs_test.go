package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/internal/dockertest"
	"github.com/forge-ci/forge/wire/wiretest"
)

// The followers' child process (BenchmarkLogFollow): envChild is
// "followers", and these say whom to follow.
const (
	envFollowURL   = "FORGE_BENCH_FOLLOW_URL"   // the log's follow URL
	envFollowN     = "FORGE_BENCH_FOLLOW_N"     // how many followers
	envFollowToken = "FORGE_BENCH_FOLLOW_TOKEN" // the coordinator's admin token
)

// benchToken is the benchmark coordinator's admin token.
const benchToken = "forge_admin_bench_0123456789abcdef"

// stampScript writes n lines, each with the container's clock
// (adjtimex's seconds and microseconds) taken just before the line is
// written, every 50 ms, after a pause that lets readers attach.
const stampScript = `image: %s
execute:
  - |
    sleep 2
    i=0
    while [ $i -lt %d ]; do
      t=$(busybox adjtimex)
      s=${t#*tv_sec:}; s=${s#"${s%%%%[0-9]*}"}; s=${s%%%%[!0-9]*}
      u=${t#*tv_usec:}; u=${u#"${u%%%%[0-9]*}"}; u=${u%%%%[!0-9]*}
      echo "forge-bench $i $s $u"
      i=$((i+1))
      sleep 0.05
    done
`

// loadScript writes a line of about 100 bytes every 50 ms until it is
// cancelled.
const loadScript = `image: %s
execute:
  - |
    i=0
    while true; do
      echo "forge-bench-load $i: the quick brown fox jumps over the lazy dog, 0123456789 abcdefghij"
      i=$((i+1))
      sleep 0.05
    done
`

// BenchmarkLogFollow measures the build page's live log through the real
// path: a build container on this engine, its agent, the coordinator's
// log store and its HTTP edge, and a client reading
// GET /api/builds/{id}/log?follow=1, the stream the build page reads.
//
// Latency (log.line_to_page_ms_*): each line carries the container's
// clock when it was written; the client takes its own when it reads the
// line (one clock: the container shares this kernel's). The baseline
// (log.engine_ms_*) reads the same lines at the same time straight from
// the engine's log of the container (ContainerLogs, follow), as the
// agent does: what Forge adds is the difference.
//
// Followers (log.followers_cpu_ms_per_s): a build writes a line every
// 50 ms; this process (coordinator, agent and benchmark) is charged CPU
// per second of wall time while 1, then FORGE_BENCH_FOLLOWERS (500),
// clients in a child process follow its log.
func BenchmarkLogFollow(b *testing.B) {
	lines := envInt("FORGE_BENCH_LOG_LINES", 300)
	followers := envInt("FORGE_BENCH_FOLLOWERS", 500)
	if _, err := raiseNoFile(); err != nil {
		b.Logf("raise the open-file limit: %v", err)
	}
	cli, node, runID, image := benchEngine(b)
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv, stop := startForgeHTTP(b, wiretest.MustPKI(b), cli, node, cli,
		daemon.Config{Executor: dockertest.Forgexec(b), Access: daemon.Access{AdminToken: benchToken}}, httpLn)
	defer stop()
	r := &logRig{cli: cli, srv: srv, node: node, runID: runID, image: image, base: "http://" + httpLn.Addr().String()}

	page, engine := r.latency(b, lines)
	const skip = 5 // the first lines: readers and the agent's log pump settle
	if len(page) <= skip || len(engine) <= skip {
		b.Fatalf("%d lines through Forge, %d from the engine: want more than %d", len(page), len(engine), skip)
	}
	page, engine = page[skip:], engine[skip:]
	cpu1, cpuN, rate, minLines := r.followers(b, followers)

	pct := func(xs []float64, p float64) float64 { return Percentile(xs, p) }
	b.ReportMetric(pct(page, 0.99), "line-to-page-p99-ms")
	b.ReportMetric(cpuN, "followers-cpu-ms/s")
	record(b, map[string]any{
		"log.line_to_page_ms_p50":            pct(page, 0.5),
		"log.line_to_page_ms_p99":            pct(page, 0.99),
		"log.engine_ms_p50":                  pct(engine, 0.5),
		"log.engine_ms_p99":                  pct(engine, 0.99),
		"log.lines":                          float64(len(page)),
		"log.followers":                      float64(followers),
		"log.followers_cpu_ms_per_s":         cpuN,
		"log.follower_baseline_cpu_ms_per_s": cpu1,
		"log.follower_cpu_us_per_line":       (cpuN - cpu1) * 1000 / rate / float64(max(followers-1, 1)),
		"log.load_lines_per_s":               rate,
	})
	b.Logf("line to page ms p50 %.1f p90 %.1f p99 %.1f max %.1f; engine ms p50 %.1f p90 %.1f p99 %.1f max %.1f",
		pct(page, 0.5), pct(page, 0.9), pct(page, 0.99), pct(page, 1), pct(engine, 0.5), pct(engine, 0.9), pct(engine, 0.99), pct(engine, 1))
	b.Logf("followers: 1 → %.1f CPU ms/s, %d → %.1f CPU ms/s, at %.1f lines/s; the slowest follower read %d lines in the window",
		cpu1, followers, cpuN, rate, minLines)
}

type logRig struct {
	cli         *client.Client
	srv         *daemon.Coordinator
	node, runID string
	image, base string
}

func (r *logRig) submit(b *testing.B, yml string) *coordinator.Build {
	b.Helper()
	cfg, err := config.Parse(".forge.yml", []byte(yml))
	if err != nil {
		b.Fatal(err)
	}
	bd, err := r.srv.Builds.Submit(dockertest.Context(b, 30*time.Second), coordinator.Request{
		Subject: coordinator.Subject{Owner: "acme", Repo: "widgets", Branch: "bench", SHA: benchSHA, Action: "execute", Trigger: "api"},
		Config:  cfg, ConfigText: yml, Node: r.node, Labels: map[string]string{dockertest.LabelTest: r.runID},
	})
	if err != nil {
		b.Fatal(err)
	}
	return bd
}

// follow opens the build's log stream as the page does.
func (r *logRig) follow(ctx context.Context, id string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/api/builds/"+id+"/log?follow=1", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+benchToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("follow: %s", resp.Status)
	}
	return resp.Body, nil
}

// latency runs the stamped build and returns each line's latency in ms
// through Forge's stream and from the engine's log, in line order.
func (r *logRig) latency(b *testing.B, n int) (page, engine []float64) {
	b.Helper()
	ctx := dockertest.Context(b, 5*time.Minute)
	bd := r.submit(b, fmt.Sprintf(stampScript, r.image, n))
	body, err := r.follow(ctx, bd.ID)
	if err != nil {
		b.Fatal(err)
	}
	var (
		wg          sync.WaitGroup
		pageErr     error
		engineErr   error
		engineLines []float64
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer body.Close()
		page, pageErr = readStamps(body, n)
	}()
	// The engine's log, once the build's container is known.
	cid := ""
	for cid == "" {
		cur, err := r.srv.Store.Build(ctx, bd.ID)
		if err != nil {
			b.Fatal(err)
		}
		if cur.State.Final() {
			b.Fatalf("build %s: %s (%s) before it landed", bd.ID, cur.State, cur.Reason)
		}
		if cid = cur.ContainerID; cid == "" {
			select {
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	logs, err := r.cli.ContainerLogs(ctx, cid, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		b.Fatal(err)
	}
	pr, pw := io.Pipe()
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, err := stdcopy.StdCopy(pw, pw, logs)
		pw.CloseWithError(err)
	}()
	go func() {
		defer wg.Done()
		defer logs.Close()
		engineLines, engineErr = readStamps(pr, n)
		pr.Close()
	}()
	final, err := r.srv.Builds.Wait(ctx, bd.ID)
	if err != nil {
		b.Fatal(err)
	}
	wg.Wait()
	if final.State != coordinator.Success {
		b.Fatalf("stamped build %s: %s (%s)", bd.ID, final.State, final.Reason)
	}
	if pageErr != nil || engineErr != nil {
		b.Fatalf("reading the stamped lines: through Forge: %v; from the engine: %v", pageErr, engineErr)
	}
	return page, engineLines
}

// readStamps reads stamped lines until the n-th, and returns the time
// from each line's stamp to its reading, in ms.
func readStamps(rd io.Reader, n int) ([]float64, error) {
	br := bufio.NewReader(rd)
	out := make([]float64, 0, n)
	for len(out) < n {
		line, err := br.ReadString('\n')
		now := time.Now()
		if err != nil {
			return out, fmt.Errorf("after %d lines: %w", len(out), err)
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "forge-bench" {
			continue
		}
		i, err1 := strconv.Atoi(f[1])
		sec, err2 := strconv.ParseInt(f[2], 10, 64)
		usec, err3 := strconv.ParseInt(f[3], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil || i != len(out) {
			return out, fmt.Errorf("line %q (want line %d): %v", line, len(out), err)
		}
		out = append(out, float64(now.Sub(time.Unix(sec, usec*1000)))/float64(time.Millisecond))
	}
	return out, nil
}

// followers runs the load build and measures this process's CPU per
// second of wall time over a window with 1 follower, then with n. It
// returns both, the build's lines per second in the second window, and
// the fewest lines a follower read in that window.
func (r *logRig) followers(b *testing.B, n int) (cpu1, cpuN, rate float64, minLines int) {
	b.Helper()
	const settle, window = 5 * time.Second, 15 * time.Second
	ctx := dockertest.Context(b, 5*time.Minute)
	bd := r.submit(b, fmt.Sprintf(loadScript, r.image))
	defer func() {
		r.srv.Builds.Cancel(ctx, bd.ID, "benchmark over")
		r.srv.Builds.Wait(ctx, bd.ID)
	}()
	url := r.base + "/api/builds/" + bd.ID + "/log?follow=1"
	measure := func(k int) (float64, followerStats) {
		c := startFollowers(b, url, k)
		defer c.stop(b)
		time.Sleep(settle) // catching up with what was written before
		c.mark(b)
		stopProfile := startCPUProfile(b, fmt.Sprintf("followers-%d.cpu", k))
		t0, cpu0 := time.Now(), cpuTime(os.Getpid())
		time.Sleep(window)
		cpu, wall := cpuTime(os.Getpid())-cpu0, time.Since(t0)
		stopProfile()
		st := c.mark(b)
		return float64(cpu) / float64(time.Millisecond) / wall.Seconds(), st
	}
	// The build must be writing before the first window.
	body, err := r.follow(ctx, bd.ID)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := bufio.NewReader(body).ReadString('\n'); err != nil {
		b.Fatal(err)
	}
	body.Close()
	cpu1, one := measure(1)
	cpuN, many := measure(n)
	if many.min == 0 || one.min == 0 {
		b.Fatalf("a follower read nothing in a window: 1 follower %+v, %d followers %+v", one, n, many)
	}
	return cpu1, cpuN, float64(many.max) / window.Seconds(), many.min
}

// followersChild is the child process that follows a log with many
// clients.
type followersChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	done  chan struct{}
	err   error
}

type followerStats struct{ min, max int }

func startFollowers(b *testing.B, url string, n int) *followersChild {
	b.Helper()
	cmd := childCommand(b, "followers", envFollowURL+"="+url, envFollowN+"="+strconv.Itoa(n), envFollowToken+"="+benchToken)
	cmd.Stderr = os.Stderr
	c := &followersChild{cmd: cmd, done: make(chan struct{})}
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	c.out = bufio.NewScanner(stdout)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	if line := c.line(b, time.Minute); line != "ready" {
		c.stop(b)
		b.Fatalf("followers: %q, want ready", line)
	}
	return c
}

// line reads the child's next line of output, within d.
func (c *followersChild) line(b *testing.B, d time.Duration) string {
	got := make(chan string, 1)
	go func() {
		if c.out.Scan() {
			got <- c.out.Text()
		} else {
			got <- "(no output: " + fmt.Sprint(c.out.Err()) + ")"
		}
	}()
	select {
	case l := <-got:
		return l
	case <-time.After(d):
		c.cmd.Process.Signal(syscall.SIGKILL)
		b.Fatalf("the followers' process said nothing for %v", d)
		return ""
	}
}

// mark asks the child how many lines each follower read since the last
// mark (a newline on its standard input): it answers "min max".
func (c *followersChild) mark(b *testing.B) followerStats {
	if _, err := io.WriteString(c.stdin, "\n"); err != nil {
		b.Fatal(err)
	}
	var st followerStats
	if _, err := fmt.Sscan(c.line(b, 30*time.Second), &st.min, &st.max); err != nil {
		b.Fatalf("followers' mark: %v", err)
	}
	return st
}

// stop closes the child's standard input, its signal to stop, and waits.
func (c *followersChild) stop(b *testing.B) {
	if stopChild(b, "followers'", c.cmd, &c.stdin, c.done) && c.err != nil {
		b.Errorf("followers' process: %v", c.err)
	}
}

// runFollowersChild follows envFollowURL with envFollowN clients, each on
// a connection of its own, counting the lines each reads. It prints
// "ready" once every stream is open; for each line on its standard input
// it prints the fewest and the most lines a follower read since the
// previous one; it stops when standard input ends.
func runFollowersChild() int {
	n := childStart("followers", envFollowN)
	if n == 0 {
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}}
	counts := make([]atomic.Int64, n)
	var (
		opened, wg sync.WaitGroup
		failed     atomic.Int64
	)
	for i := range n {
		opened.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, os.Getenv(envFollowURL), nil)
			req.Header.Set("Authorization", "Bearer "+os.Getenv(envFollowToken))
			resp, err := hc.Do(req)
			opened.Done()
			if err != nil || resp.StatusCode != http.StatusOK {
				failed.Add(1)
				fmt.Fprintln(os.Stderr, "follower:", err, resp)
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, 32<<10)
			for {
				k, err := resp.Body.Read(buf)
				counts[i].Add(int64(strings.Count(string(buf[:k]), "\n")))
				if err != nil {
					return
				}
			}
		}()
	}
	opened.Wait()
	if failed.Load() > 0 {
		fmt.Fprintln(os.Stderr, "followers:", failed.Load(), "could not follow")
		return 1
	}
	fmt.Println("ready")
	last := make([]int64, n)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		lo, hi := int64(-1), int64(0)
		for i := range counts {
			c := counts[i].Load()
			d := c - last[i]
			last[i] = c
			if lo < 0 || d < lo {
				lo = d
			}
			hi = max(hi, d)
		}
		fmt.Println(lo, hi)
	}
	cancel()
	wg.Wait()
	return 0
}
