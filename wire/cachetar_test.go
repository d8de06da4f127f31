package wire

import (
	"archive/tar"
	"errors"
	"testing"
	"time"
)

func TestCheckCacheEntry(t *testing.T) {
	paths := []string{"/root/.cache/go-build", "/forge/src/node_modules"}
	good := []struct {
		h    tar.Header
		root string
	}{
		{tar.Header{Name: "root/.cache/go-build/", Typeflag: tar.TypeDir}, "/root/.cache/go-build"},
		{tar.Header{Name: "root/.cache/go-build/ab/cd-d", Typeflag: tar.TypeReg, Size: 10}, "/root/.cache/go-build"},
		{tar.Header{Name: "forge/src/node_modules/.bin/x", Typeflag: tar.TypeSymlink, Linkname: "../x/cli.js"}, "/forge/src/node_modules"},
		{tar.Header{Name: "forge/src/node_modules/y", Typeflag: tar.TypeSymlink, Linkname: "/forge/src/node_modules/x"}, "/forge/src/node_modules"},
		{tar.Header{Name: "forge/src/node_modules/h", Typeflag: tar.TypeLink, Linkname: "forge/src/node_modules/x/a"}, "/forge/src/node_modules"},
	}
	for _, g := range good {
		root, err := CheckCacheEntry(paths, &g.h)
		if err != nil || root != g.root {
			t.Errorf("%s: root %q, %v; want %q", g.h.Name, root, err, g.root)
		}
	}
	bad := []tar.Header{
		{Name: "/root/.cache/go-build/x", Typeflag: tar.TypeReg},
		{Name: "root/.cache/go-build/../../../etc/passwd", Typeflag: tar.TypeReg},
		{Name: "root/.cache/go-build/./x", Typeflag: tar.TypeReg},
		{Name: "root/.cache//go-build/x", Typeflag: tar.TypeReg},
		{Name: "etc/passwd", Typeflag: tar.TypeReg},
		{Name: "root/.cache/go-buildx/y", Typeflag: tar.TypeReg},
		{Name: "root/.cache", Typeflag: tar.TypeDir},
		{Name: "", Typeflag: tar.TypeReg},
		{Name: "root/.cache/go-build/shadow", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
		{Name: "root/.cache/go-build/up", Typeflag: tar.TypeSymlink, Linkname: "../../.ssh"},
		{Name: "root/.cache/go-build/mod", Typeflag: tar.TypeSymlink, Linkname: "/forge/src/node_modules"},
		{Name: "root/.cache/go-build/h", Typeflag: tar.TypeLink, Linkname: "etc/shadow"},
		{Name: "root/.cache/go-build/h", Typeflag: tar.TypeLink, Linkname: "forge/src/node_modules/x"},
		{Name: "root/.cache/go-build/h", Typeflag: tar.TypeLink, Linkname: "/root/.cache/go-build/x"},
		{Name: "root/.cache/go-build/dev", Typeflag: tar.TypeChar},
		{Name: "root/.cache/go-build/blk", Typeflag: tar.TypeBlock},
		{Name: "root/.cache/go-build/fifo", Typeflag: tar.TypeFifo},
		{Name: "root/.cache/go-build/sparse", Typeflag: tar.TypeGNUSparse},
		{Name: "root/.cache/go-build/d", Typeflag: tar.TypeDir, Size: 5},
		{Name: "root/.cache/go-build/neg", Typeflag: tar.TypeReg, Size: -1},
	}
	for _, h := range bad {
		if root, err := CheckCacheEntry(paths, &h); !errors.Is(err, ErrUnsafeEntry) {
			t.Errorf("%q (%c -> %q): root %q, %v; want ErrUnsafeEntry", h.Name, h.Typeflag, h.Linkname, root, err)
		}
	}
}

func TestCacheHeader(t *testing.T) {
	h := &tar.Header{Name: "root/.cache/x", Typeflag: tar.TypeReg, Mode: 0o6755, Size: 3, Uid: 1000, Gid: 1000,
		ModTime: time.Unix(100, 999), Xattrs: map[string]string{"security.capability": "x"},
		PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "x"}, Uname: "someone"}
	got := CacheHeader(h)
	if got.Mode != 0o755 || got.Uid != 1000 || got.Size != 3 || !got.ModTime.Equal(time.Unix(100, 0)) ||
		len(got.PAXRecords) != 0 || got.Uname != "" || got.Name != h.Name {
		t.Errorf("header %+v", got)
	}
}
