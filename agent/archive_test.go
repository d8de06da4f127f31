package agent

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/forge-ci/forge/internal/dockertest"
)

func tarOf(t testing.TB, files []dockertest.File) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Body)), Typeflag: tar.TypeReg}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if f.Link != "" {
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, f.Link, 0
		}
		if strings.HasSuffix(f.Name, "/") {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.Body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readTar(t *testing.T, b []byte) map[string]*tar.Header {
	t.Helper()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

func TestWriteArchive(t *testing.T) {
	exe := []byte("\x7fELF fake executor")
	src := tarOf(t, []dockertest.File{
		{Name: "./"},
		{Name: "main.go", Body: []byte("package main\n")},
		{Name: "scripts/run.sh", Mode: 0o755, Body: []byte("#!/bin/sh\n")},
		{Name: "link", Link: "main.go"},
	})
	var buf bytes.Buffer
	err := WriteArchive(&buf, Payload{Executor: bytes.NewReader(exe), ExecutorSize: int64(len(exe)),
		Spec: []byte(`{"version":1}`), Workdir: "/forge/src", Source: bytes.NewReader(src)})
	if err != nil {
		t.Fatal(err)
	}
	got := readTar(t, buf.Bytes())
	for name, mode := range map[string]int64{
		"forgexec": 0o755, ".forge/build.json": 0o644, "forge/": 0o755, "forge/src/": 0o755,
		"forge/src/main.go": 0o644, "forge/src/scripts/run.sh": 0o755,
	} {
		h, ok := got[name]
		if !ok {
			t.Errorf("archive lacks %s; has %v", name, got)
			continue
		}
		if h.Mode != mode {
			t.Errorf("%s mode %o, want %o", name, h.Mode, mode)
		}
	}
	if h := got["forge/src/link"]; h == nil || h.Linkname != "main.go" {
		t.Errorf("symlink not kept: %+v", h)
	}
	// The executor must come first: a reader of the stream sees it whole
	// before anything else.
	first, _ := tar.NewReader(bytes.NewReader(buf.Bytes())).Next()
	if first.Name != "forgexec" {
		t.Errorf("first entry %s, want forgexec", first.Name)
	}
}

func TestWriteArchiveRefusesEscapes(t *testing.T) {
	for _, name := range []string{"../etc/passwd", "/etc/passwd", "a/../../b"} {
		src := tarOf(t, []dockertest.File{{Name: name, Body: []byte("x")}})
		err := WriteArchive(io.Discard, Payload{Executor: strings.NewReader("x"), ExecutorSize: 1,
			Workdir: "/forge/src", Source: bytes.NewReader(src)})
		if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%s: err %v, want ErrUnsafePath", name, err)
		}
	}
	err := WriteArchive(io.Discard, Payload{Executor: strings.NewReader("x"), ExecutorSize: 1, Workdir: "rel"})
	if err == nil {
		t.Error("relative workdir accepted")
	}
	err = WriteArchive(io.Discard, Payload{Executor: strings.NewReader("x"), ExecutorSize: 5, Workdir: "/w"})
	if err == nil {
		t.Error("short executor accepted")
	}
}

// TestWriteArchiveExecutorReaders: the executor is written the same
// whether it comes as the agent's in-memory *bytes.Reader (written in one
// piece) or as any other reader (copied), and no entry carries a PAX
// extended header (whole-second times need none).
func TestWriteArchiveExecutorReaders(t *testing.T) {
	exe := bytes.Repeat([]byte("forgexec"), 10000)
	write := func(r io.Reader) []byte {
		var buf bytes.Buffer
		if err := WriteArchive(&buf, Payload{Executor: r, ExecutorSize: int64(len(exe)), Spec: []byte(`{}`), Workdir: "/w"}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	inMemory := write(bytes.NewReader(exe))
	other := write(io.MultiReader(bytes.NewReader(exe[:100]), bytes.NewReader(exe[100:])))
	// The same archive but for its time stamp, which is the second it was
	// written in: the two may straddle a second.
	if a, b := archiveEntries(t, inMemory), archiveEntries(t, other); a != b {
		t.Errorf("archives differ:\n%s\n%s", a, b)
	}
	tr := tar.NewReader(bytes.NewReader(inMemory))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(h.PAXRecords) > 0 {
			t.Errorf("%s has PAX records %v", h.Name, h.PAXRecords)
		}
		if h.Name == "forgexec" {
			got, _ := io.ReadAll(tr)
			if !bytes.Equal(got, exe) {
				t.Errorf("executor: got %d bytes, want %d", len(got), len(exe))
			}
		}
	}
	// A reader longer than the stated size gives exactly size bytes, as
	// before.
	var buf bytes.Buffer
	if err := WriteArchive(&buf, Payload{Executor: bytes.NewReader(append(exe, "more"...)), ExecutorSize: int64(len(exe)), Spec: []byte(`{}`), Workdir: "/w"}); err != nil {
		t.Errorf("longer executor reader: %v", err)
	}
}

// archiveEntries describes every entry of a tar archive, its content's
// digest included, all but its time stamp.
func archiveEntries(t *testing.T, archive []byte) string {
	t.Helper()
	var out strings.Builder
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Nanosecond() != 0 {
			t.Errorf("%s: time stamp %v is not whole seconds", h.Name, h.ModTime)
		}
		fmt.Fprintf(&out, "%s %c %o %d %d/%d %s %x\n", h.Name, h.Typeflag, h.Mode, h.Size, h.Uid, h.Gid, h.Format, sha256.Sum256(body))
	}
}
