package bench

import (
	"math"
	"path/filepath"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	xs := []float64{4, 1, 3, 2}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {0.5, 2.5}, {0.9, 3.7}, {1, 4}} {
		if got := Percentile(xs, c.p); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Percentile(%v, %v) = %v, want %v", xs, c.p, got, c.want)
		}
	}
	if xs[0] != 4 {
		t.Errorf("Percentile sorted its input: %v", xs)
	}
	if !math.IsNaN(Percentile(nil, 0.5)) {
		t.Error("no samples: want NaN")
	}
}

func TestRecordMergesAndTableJudges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.json")
	if err := RecordTo(path, map[string]any{"dispatch.ratio": 1.1234567, "machine.nproc": "2"}); err != nil {
		t.Fatal(err)
	}
	if err := RecordTo(path, map[string]any{"transfer.ratio": 0.5, "dispatch.ratio": 1.3}); err != nil {
		t.Fatal(err)
	}
	r, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if r["dispatch.ratio"] != 1.3 || r["transfer.ratio"] != 0.5 || r["machine.nproc"] != "2" {
		t.Fatalf("merged results: %v", r)
	}
	var out strings.Builder
	Table(&out, r)
	for _, want := range []string{"nproc:", "| dispatch.ratio", "<= 1.25 (aim 1.05)", "MISSES", ">= 0.8"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if got := (Target{Max: 50}).Check(49); got != "holds" {
		t.Errorf("49 <= 50: %q", got)
	}
	if got := (Target{Min: 0.8}).Check(0.79); got != "MISSES" {
		t.Errorf("0.79 >= 0.8: %q", got)
	}
}

func TestQueueRowsHaveTheIssuesTarget(t *testing.T) {
	var out strings.Builder
	Table(&out, map[string]any{"queue.slot_to_create_ms_p99": 120.0, "queue.baseline_slot_to_create_ms_p99": 40.0})
	for _, want := range []string{"| queue.slot_to_create_ms_p99", "<= 100", "MISSES", "| queue.baseline_slot_to_create_ms_p99"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
