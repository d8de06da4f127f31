package config

import "testing"

func TestParseAndFormatForFlags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		out  string
	}{
		{"4GiB", 4 << 30, "4GiB"}, {"512m", 512 << 20, "512MiB"}, {"1.5g", 1536 << 20, "1536MiB"},
		{"8388608", 8 << 20, "8MiB"}, {"7000001", 7000001, "7000001B"},
	} {
		n, err := ParseMemory(tc.in)
		if err != nil || n != tc.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", tc.in, n, err, tc.want)
		}
		if s := FormatMemory(n); s != tc.out {
			t.Errorf("FormatMemory(%d) = %q, want %q", n, s, tc.out)
		}
	}
	for _, bad := range []string{"", "lots", "1k", "-1g", "4 parsecs"} {
		if _, err := ParseMemory(bad); err == nil {
			t.Errorf("ParseMemory(%q) accepted", bad)
		}
	}
	for in, want := range map[string]string{"2": "2", "0.5": "0.5", "1.250": "1.25", "16": "16"} {
		n, err := ParseCPUs(in)
		if err != nil || FormatCPUs(n) != want {
			t.Errorf("ParseCPUs(%q) = %d, %v (formats as %q), want %s", in, n, err, FormatCPUs(n), want)
		}
	}
	for _, bad := range []string{"", "0", "two", "-1", "1e3"} {
		if _, err := ParseCPUs(bad); err == nil {
			t.Errorf("ParseCPUs(%q) accepted", bad)
		}
	}
}
