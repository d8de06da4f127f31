//go:build linux

package forgexec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeSecrets(t *testing.T, s map[string][]byte) string {
	t.Helper()
	raw, err := EncodeSecrets(s)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "secrets.json")
	if err := os.WriteFile(path, raw, 0o400); err != nil {
		t.Fatal(err)
	}
	return path
}

// The file round-trips any bytes but NUL, and is gone once taken.
func TestTakeSecrets(t *testing.T) {
	in := map[string][]byte{"TOKEN": []byte("s3cr=t \n\xff\"'$x"), "B": []byte("b")}
	path := writeSecrets(t, in)
	got, err := TakeSecrets(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["TOKEN"] != string(in["TOKEN"]) || got["B"] != "b" {
		t.Errorf("took %q", got)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the secrets file is still there: %v", err)
	}
	if got, err := TakeSecrets(path); err != nil || got != nil {
		t.Errorf("no file: %v %v, want no secrets", got, err)
	}
}

func TestTakeSecretsRefuses(t *testing.T) {
	if _, err := EncodeSecrets(map[string][]byte{"A": []byte("a\x00b")}); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("encode a NUL: %v", err)
	}
	if _, err := EncodeSecrets(map[string][]byte{"A=B": []byte("x")}); err == nil {
		t.Error("encoded a name with =")
	}
	for name, content := range map[string]string{
		"not json": "{", "a list": `["x"]`, "not base64": `{"A":"%%%"}`, "a NUL": `{"A":"YQBi"}`,
	} {
		path := filepath.Join(t.TempDir(), "secrets.json")
		os.WriteFile(path, []byte(content), 0o400)
		if _, err := TakeSecrets(path); err == nil {
			t.Errorf("%s: taken", name)
		}
	}
	if os.Getuid() != 0 {
		// A file that cannot be removed is not run with.
		dir := t.TempDir()
		path := filepath.Join(dir, "secrets.json")
		os.WriteFile(path, []byte(`{"A":"YQ=="}`), 0o400)
		os.Chmod(dir, 0o500)
		defer os.Chmod(dir, 0o700)
		if _, err := TakeSecrets(path); err == nil || !strings.Contains(err.Error(), "remove") {
			t.Errorf("unremovable: %v", err)
		}
	}
}

// Commands get the secrets as environment variables, over the spec's.
func TestRunSecrets(t *testing.T) {
	needShell(t)
	spec := newSpec(t, `echo "[$TOKEN][$PLAIN]"`)
	spec.Env = map[string]string{"TOKEN": "from-spec", "PLAIN": "plain"}
	code, out := runSpec(t, Runner{Secrets: map[string]string{"TOKEN": "it's s3cret"}}, spec)
	if code != 0 || !strings.HasSuffix(out, "[it's s3cret][plain]\n") {
		t.Fatalf("code %d, output %q", code, out)
	}
	if spec.Env["TOKEN"] != "from-spec" {
		t.Error("Run changed the spec's Env")
	}
}

// FuzzDecodeSecrets: whatever the file holds, decoding does not panic,
// and what it accepts is environment entries that encode back to the
// same secrets.
func FuzzDecodeSecrets(f *testing.F) {
	for _, s := range []string{`{"A":"YQ=="}`, `{}`, `{"A":"YQBi"}`, `{"A=B":"eA=="}`, `{"A":"YQ=="} {}`, `null`, `{"":""}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := DecodeSecrets(raw)
		if err != nil {
			return
		}
		back := map[string][]byte{}
		for k, v := range got {
			if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
				t.Fatalf("accepted %q=%q", k, v)
			}
			back[k] = []byte(v)
		}
		enc, err := EncodeSecrets(back)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeSecrets(enc)
		if err != nil || len(again) != len(got) {
			t.Fatalf("round trip: %v", err)
		}
		for k, v := range got {
			if again[k] != v {
				t.Fatalf("%s: %q, then %q", k, v, again[k])
			}
		}
	})
}
