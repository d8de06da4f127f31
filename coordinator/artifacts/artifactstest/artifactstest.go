// Package artifactstest reads back the archives of builds' artifacts
// that the coordinator serves, for the tests of the store, the API and
// the whole path.
package artifactstest

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"testing"
)

// Unpack reads a gzipped tar whole: each file's bytes by name, and
// "-> target" for a symbolic link. It fails the test on a broken archive.
func Unpack(t testing.TB, tgz io.Reader) map[string]string {
	t.Helper()
	zr, err := gzip.NewReader(tgz)
	if err != nil {
		t.Fatalf("artifacts archive: %v", err)
	}
	out := map[string]string{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("artifacts archive: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("artifacts archive: %s: %v", h.Name, err)
		}
		out[h.Name] = string(b)
		if h.Typeflag == tar.TypeSymlink {
			out[h.Name] = "-> " + h.Linkname
		}
	}
}
