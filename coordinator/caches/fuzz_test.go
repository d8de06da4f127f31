package caches

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/wire"
)

// FuzzCheckTar feeds checkTar, the coordinator's check of a cache archive
// an agent sends (PROTOCOL.md §6.8), arbitrary bytes: it never panics, it
// fails only with ErrUnsafeArchive, and a tar it accepts has nothing but
// entries under the cache's paths that wire.CheckCacheEntry takes.
func FuzzCheckTar(f *testing.F) {
	paths := []string{"/root/.cache/go-build", "/w/node_modules"}
	seed := func(hs ...tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hs {
			tw.WriteHeader(&h)
			if h.Typeflag == tar.TypeReg {
				tw.Write(make([]byte, h.Size))
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	f.Add(seed(tar.Header{Name: "root/.cache/go-build/a", Typeflag: tar.TypeReg, Size: 3, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "w/node_modules/.bin/x", Typeflag: tar.TypeSymlink, Linkname: "../x/cli.js"}))
	f.Add(seed(tar.Header{Name: "root/.cache/go-build/s", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}))
	f.Add(seed(tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Size: 1}))
	f.Add(seed(tar.Header{Name: "root/.cache/go-build/h", Typeflag: tar.TypeLink, Linkname: "root/.cache/go-build/a"}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := checkTar(bytes.NewReader(data), paths)
		if err != nil {
			if !errors.Is(err, coordinator.ErrUnsafeArchive) {
				t.Fatalf("an error that is not ErrUnsafeArchive: %v", err)
			}
			return
		}
		tr := tar.NewReader(bytes.NewReader(data))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("accepted, then unreadable: %v", err)
			}
			if _, err := wire.CheckCacheEntry(paths, h); err != nil {
				t.Fatalf("accepted an entry the rules refuse: %v", err)
			}
		}
	})
}
