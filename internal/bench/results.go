// Package bench holds Forge's benchmarks (`make bench`) and the little
// they share with the program that prints their results: the JSON file
// every benchmark merges its keys into, percentiles, and the table.
//
// Each benchmark compares Forge against a baseline measured in the same
// run (DESIGN §7: speed is measured by benchmarks, never by timed
// assertions in tests). docs/benchmarks.md explains the method of every key.
package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"
)

// EnvOut names the environment variable that holds the path of the JSON
// file the benchmarks write (make bench sets it to bench-results.json).
// When it is empty, results are only reported as benchmark metrics.
const EnvOut = "FORGE_BENCH_OUT"

// Record merges kv into the JSON object in the file named by
// FORGE_BENCH_OUT, creating it when needed. Keys already there are
// replaced, others kept, so each benchmark adds its own. Values are
// numbers or strings. The file is locked while it is rewritten.
func Record(kv map[string]any) error {
	path := os.Getenv(EnvOut)
	if path == "" {
		return nil
	}
	return RecordTo(path, kv)
}

// RecordTo is Record with an explicit path.
func RecordTo(path string, kv map[string]any) error {
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		lock.Close()
		os.Remove(path + ".lock")
	}()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	all, err := Load(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if all == nil {
		all = map[string]any{}
	}
	for k, v := range kv {
		if f, ok := v.(float64); ok {
			v = round(f)
		}
		all[k] = v
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// round keeps three decimals: enough for milliseconds and MB/s, and the
// file stays readable.
func round(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return f
	}
	return math.Round(f*1000) / 1000
}

// Load reads a results file.
func Load(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	if len(strings.TrimSpace(string(b))) == 0 {
		return out, nil
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// Percentile returns the p-th quantile (0 <= p <= 1) of xs by linear
// interpolation between the closest ranks (the common "type 7"
// definition: the median of an even count is the mean of the middle two).
// xs need not be sorted; it is not modified. NaN for no samples.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	pos := p * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(s)-1)
	return s[lo] + (pos-float64(lo))*(s[hi]-s[lo])
}

// Millis converts durations to float milliseconds.
func Millis(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}

// Target is the goal of one key.
type Target struct {
	Key   string
	Max   float64 // the value must be at most Max (when Max > 0)
	Min   float64 // the value must be at least Min (when Min > 0)
	Aim   string  // what the issue aims for, for people
	Notes string
}

// Rows lists the keys of the table in order, with their targets where
// the issue sets one.
var Rows = []Target{
	{Key: "dispatch.forge_ms_p50"},
	{Key: "dispatch.forge_ms_p90"},
	{Key: "dispatch.baseline_ms_p50"},
	{Key: "dispatch.baseline_ms_p90"},
	{Key: "dispatch.floor_ms_p50"},
	{Key: "dispatch.floor_ms_p90"},
	{Key: "dispatch.ratio", Max: 1.25, Aim: "aim 1.05"},
	{Key: "dispatch.samples"},
	{Key: "dispatch.forge_created_ms_p50"},
	{Key: "dispatch.baseline_created_ms_p50"},
	{Key: "dispatch.floor_created_ms_p50"},
	{Key: "transfer.yamux_mb_s"},
	{Key: "transfer.plain_mb_s"},
	{Key: "transfer.ratio", Min: 0.8},
	{Key: "transfer.yamux_cpu_ms_per_mib"},
	{Key: "transfer.plain_cpu_ms_per_mib"},
	{Key: "scale.agents"},
	{Key: "scale.connect_s"},
	{Key: "scale.coordinator_kib_per_agent", Max: 100},
	{Key: "scale.coordinator_heap_kib_per_agent"},
	{Key: "scale.coordinator_stack_kib_per_agent"},
	{Key: "scale.coordinator_sys_kib_per_agent"},
	{Key: "scale.coordinator_goroutines_per_agent"},
	{Key: "scale.launch_first_p99_ms"},
	{Key: "scale.launch_p50_ms"},
	{Key: "scale.launch_p90_ms"},
	{Key: "scale.launch_p99_ms", Max: 50},
	{Key: "scale.launches"},
	{Key: "scale.launch_waves_p50_ms"},
	{Key: "scale.launch_waves_p99_ms"},
	{Key: "scale.launch_rate_per_s"},
	{Key: "scale.launch_cpu_ms_coordinator"},
	{Key: "scale.launch_cpu_ms_agents"},
	{Key: "scale.launch_writes_coordinator"},
	{Key: "scale.launch_writes_agents"},
	{Key: "scale.reconnect_s"},
	{Key: "scale.restart_down_s"},
	{Key: "queue.builds"},
	{Key: "queue.max_builds"},
	{Key: "queue.slot_to_create_ms_p50"},
	{Key: "queue.slot_to_create_ms_p99", Max: 100},
	{Key: "queue.baseline_slot_to_create_ms_p50"},
	{Key: "queue.baseline_slot_to_create_ms_p99"},
	{Key: "queue.cpu_ms_per_build"},
	{Key: "queue.baseline_cpu_ms_per_build"},
	{Key: "queue.wall_s"},
	{Key: "queue.baseline_wall_s"},
	{Key: "agent.rss_mib", Max: 30},
	{Key: "agent.rss_peak_mib"},
	{Key: "agent.rss_anon_mib"},
	{Key: "agent.rss_file_mib"},
	{Key: "log.line_to_page_ms_p50"},
	{Key: "log.line_to_page_ms_p99", Max: 250},
	{Key: "log.engine_ms_p50"},
	{Key: "log.engine_ms_p99"},
	{Key: "log.lines"},
	{Key: "log.followers"},
	{Key: "log.followers_cpu_ms_per_s"},
	{Key: "log.follower_baseline_cpu_ms_per_s"},
	{Key: "log.follower_cpu_us_per_line"},
	{Key: "log.load_lines_per_s"},
	{Key: "cache.restore_mib"},
	{Key: "cache.restore_agent_mb_s"},
	{Key: "cache.restore_plain_mb_s"},
	{Key: "cache.restore_ratio", Min: 0.8},
	{Key: "cache.restore_stream_mb_s"},
	{Key: "cache.restore_stream_ratio"},
	{Key: "cache.restore_agent_cpu_ms_mib"},
	{Key: "cache.restore_plain_cpu_ms_mib"},
	{Key: "cache.warm_cold_s"},
	{Key: "cache.warm_s"},
	{Key: "cache.warm_ratio"},
	{Key: "cache.warm_cold_run_s"},
	{Key: "cache.warm_run_s"},
	{Key: "cache.warm_cache_mib"},
	{Key: "cache.warm_pairs"},
}

// Check says whether v meets t: "holds", "MISSES", or "" when t sets no
// target.
func (t Target) Check(v float64) string {
	switch {
	case t.Max > 0 && v <= t.Max, t.Min > 0 && v >= t.Min:
		return "holds"
	case t.Max > 0, t.Min > 0:
		return "MISSES"
	}
	return ""
}

func (t Target) goal() string {
	var g string
	switch {
	case t.Max > 0:
		g = "<= " + trimFloat(t.Max)
	case t.Min > 0:
		g = ">= " + trimFloat(t.Min)
	}
	if t.Aim != "" {
		g += " (" + t.Aim + ")"
	}
	return g
}

func trimFloat(f float64) string {
	s := fmt.Sprintf("%.3f", f)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// Table writes the results as a Markdown table (readable as plain text
// too): the machine first, then every key of Rows that is present, then
// any other numeric keys.
func Table(w io.Writer, r map[string]any) {
	var machine []string
	for k := range r {
		if strings.HasPrefix(k, "machine.") {
			machine = append(machine, k)
		}
	}
	sort.Strings(machine)
	for _, k := range machine {
		fmt.Fprintf(w, "%-22s %v\n", strings.TrimPrefix(k, "machine.")+":", r[k])
	}
	if len(machine) > 0 {
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "| %-38s | %12s | %-18s | %-6s |\n", "key", "value", "target", "")
	fmt.Fprintf(w, "|%s|%s:|%s|%s|\n", strings.Repeat("-", 40), strings.Repeat("-", 13), strings.Repeat("-", 20), strings.Repeat("-", 8))
	seen := map[string]bool{}
	row := func(t Target) {
		v, ok := r[t.Key]
		if !ok {
			return
		}
		seen[t.Key] = true
		f, isNum := v.(float64)
		val, status := fmt.Sprint(v), ""
		if isNum {
			val, status = trimFloat(f), t.Check(f)
		}
		fmt.Fprintf(w, "| %-38s | %12s | %-18s | %-6s |\n", t.Key, val, t.goal(), status)
	}
	for _, t := range Rows {
		row(t)
	}
	var rest []string
	for k := range r {
		if !seen[k] && !strings.HasPrefix(k, "machine.") {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		row(Target{Key: k})
	}
}
