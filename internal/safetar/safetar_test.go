package safetar

import (
	"archive/tar"
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"a": "a", "./a//b/": "a/b", ".": "", "./": "", "a/./b": "a/b", "a..b": "a..b", "..a/b": "..a/b",
	} {
		if got, err := Name(in); err != nil || got != want {
			t.Errorf("Name(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "/etc/shadow", "../x", "a/../../x", "a/..", "..", "a\x00b", strings.Repeat("a", MaxName+1)} {
		if got, err := Name(in); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Name(%q) = %q, %v; want refused", in, got, err)
		}
	}
}

func TestInside(t *testing.T) {
	for _, tc := range []struct {
		name, target, at string
		ok               bool
	}{
		{"a", "b", "b", true},
		{"d/l", "../x", "x", true},
		{"d/e/l", "../../f/g", "f/g", true},
		{"d/l", "../../x", "", false},
		{"l", "..", "", false},
		{"l", "/etc/shadow", "", false},
		{"l", "", "", false},
		{"d/l", "./../../../etc", "", false},
	} {
		at, ok := Inside(tc.name, tc.target)
		if ok != tc.ok || (ok && at != tc.at) {
			t.Errorf("Inside(%q, %q) = %q, %v; want %q, %v", tc.name, tc.target, at, ok, tc.at, tc.ok)
		}
	}
}

// TestChecker tries what an untrusted archive may hold: every refusal
// says why, and what is kept is cleaned.
func TestChecker(t *testing.T) {
	var c Checker
	for _, tc := range []struct {
		h   tar.Header
		why string // "" when kept
	}{
		{tar.Header{Name: "./d/", Typeflag: tar.TypeDir}, ""},
		{tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Size: 3}, ""},
		{tar.Header{Name: "d/old", Typeflag: tar.TypeRegA, Size: 1}, ""},
		{tar.Header{Name: "d/f", Typeflag: tar.TypeReg}, "named twice"},
		{tar.Header{Name: "/etc/shadow", Typeflag: tar.TypeReg}, "absolute"},
		{tar.Header{Name: "d/../../x", Typeflag: tar.TypeReg}, "climbs out"},
		{tar.Header{Name: ".", Typeflag: tar.TypeDir}, "the folder itself"},
		{tar.Header{Name: "leak", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}, "symbolic link to /etc/shadow"},
		{tar.Header{Name: "d/up", Typeflag: tar.TypeSymlink, Linkname: "../../etc/shadow"}, "outside the folder"},
		{tar.Header{Name: "d/in", Typeflag: tar.TypeSymlink, Linkname: "../d/f"}, ""},
		{tar.Header{Name: "d/in/x", Typeflag: tar.TypeReg}, "its parent d/in is not a folder"},
		{tar.Header{Name: "d/f/x", Typeflag: tar.TypeReg}, "its parent d/f is not a folder"},
		{tar.Header{Name: "h1", Typeflag: tar.TypeLink, Linkname: "d/f"}, ""},
		{tar.Header{Name: "h2", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}, "absolute"},
		{tar.Header{Name: "h3", Typeflag: tar.TypeLink, Linkname: "../x"}, "climbs out"},
		{tar.Header{Name: "h4", Typeflag: tar.TypeLink, Linkname: "d/in"}, "not a file kept before it"},
		{tar.Header{Name: "h5", Typeflag: tar.TypeLink, Linkname: "later"}, "not a file kept before it"},
		{tar.Header{Name: "tty", Typeflag: tar.TypeChar}, "a device"},
		{tar.Header{Name: "sda", Typeflag: tar.TypeBlock}, "a device"},
		{tar.Header{Name: "p", Typeflag: tar.TypeFifo}, "a FIFO"},
		{tar.Header{Name: "g", Typeflag: tar.TypeXGlobalHeader}, "neither a file"},
		{tar.Header{Name: "neg", Typeflag: tar.TypeReg, Size: -1}, "negative size"},
		{tar.Header{Name: "holes", Typeflag: tar.TypeReg, Size: 1 << 40, PAXRecords: map[string]string{"GNU.sparse.map": "0,1"}}, "a sparse file"},
		{tar.Header{Name: "oldholes", Typeflag: tar.TypeGNUSparse, Size: 1 << 40}, "neither a file"},
	} {
		h := tc.h
		why := c.Check(&h)
		if tc.why == "" && why != "" || !strings.Contains(why, tc.why) {
			t.Errorf("%s (%c): %q, want %q", tc.h.Name, tc.h.Typeflag, why, tc.why)
		}
	}
	if typ, ok := c.Kept("d"); !ok || typ != tar.TypeDir {
		t.Errorf("d kept as %c, %v", typ, ok)
	}
	if typ, _ := c.Kept("d/old"); typ != tar.TypeReg {
		t.Errorf("an old-style file is kept as %c, want a regular file", typ)
	}
}

func TestCheckerBoundsEntries(t *testing.T) {
	var c Checker
	for i := range MaxEntries {
		h := tar.Header{Name: "f" + strconv.Itoa(i), Typeflag: tar.TypeReg}
		if why := c.Check(&h); why != "" {
			t.Fatalf("entry %d: %s", i, why)
		}
	}
	h := tar.Header{Name: "one-more", Typeflag: tar.TypeReg}
	if why := c.Check(&h); !strings.Contains(why, "more than") {
		t.Errorf("entry %d: %q, want refused", MaxEntries+1, why)
	}
}

func TestQuote(t *testing.T) {
	if Quote("dist/app.tar") != "dist/app.tar" || Quote("a b") != `"a b"` || Quote("x\ny") != `"x\ny"` {
		t.Error(Quote("a b"), Quote("x\ny"))
	}
}

// Names that are not UTF-8 are quoted, with their bytes escaped, so a
// note carries them as they are.
func TestQuoteInvalidUTF8(t *testing.T) {
	if got := Quote("a\xffb"); got != `"a\xffb"` {
		t.Errorf("Quote(a\\xffb) = %s", got)
	}
	if got := Quote("dist/app.tar.gz"); got != "dist/app.tar.gz" {
		t.Errorf("a plain name was quoted: %s", got)
	}
}
