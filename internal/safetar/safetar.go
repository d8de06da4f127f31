// Package safetar checks the entries of untrusted tar archives: archives
// read back out of build containers (artifacts, caches) and the same
// archives as they reach the coordinator (DESIGN §5, PROTOCOL.md §6.5). An
// archive's folder is where its names are relative to; nothing an entry
// says may reach outside it. It imports only the standard library.
package safetar

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// Limits of one archive.
const (
	// MaxName is the longest entry name or link target accepted.
	MaxName = 4096
	// MaxEntries is the most entries one archive may keep: a tree of
	// millions of empty files would cost the coordinator more in records
	// than in bytes.
	MaxEntries = 100_000
)

// CutRecord is the PAX record that marks a file cut at a size bound; its
// value is the file's original size in bytes (PROTOCOL.md §6.5).
const CutRecord = "FORGE.cut"

// ErrUnsafe is the cause of every refusal of Name and Checker.Check.
var ErrUnsafe = errors.New("unsafe archive entry")

// Name returns the clean, relative form of an entry name ("a/b" for
// "./a//b/"), refusing one that is empty, absolute, climbs out with "..",
// holds a NUL or is longer than MaxName. The folder itself (".") is
// returned as "".
func Name(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("%w: empty name", ErrUnsafe)
	case len(name) > MaxName:
		return "", fmt.Errorf("%w: name of %d bytes, max %d", ErrUnsafe, len(name), MaxName)
	case strings.ContainsRune(name, 0):
		return "", fmt.Errorf("%w: %q holds a NUL", ErrUnsafe, name)
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("%w: %q is absolute", ErrUnsafe, name)
	case strings.Contains("/"+name+"/", "/../"):
		return "", fmt.Errorf("%w: %q climbs out with ..", ErrUnsafe, name)
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", nil
	}
	return clean, nil
}

// Inside reports where a symbolic link at name (clean, relative) that
// points to target lands, relative to the folder, and whether that is
// inside it. An absolute target is outside, whatever it names: it would be
// read on whichever machine follows it.
func Inside(name, target string) (string, bool) {
	if target == "" || strings.HasPrefix(target, "/") || strings.ContainsRune(target, 0) {
		return "", false
	}
	at := path.Join(path.Dir(name), target)
	if at == ".." || strings.HasPrefix(at, "../") {
		return "", false
	}
	return at, true
}

// Checker decides, entry by entry, what of an untrusted archive may be
// kept. It remembers the entries kept, so that a hard link may only name
// a file kept before it and nothing is written through a link or a file.
// The zero value is ready.
type Checker struct {
	kept    map[string]byte // clean name -> type flag
	refused map[string]bool // clean names left out that are not folders
}

// Check says why h may not be kept, or "" when it may, having cleaned
// h.Name (and the name a hard link names) in place. Regular files,
// folders, symbolic links that stay in the folder, and hard links to a
// regular file kept before are kept; devices, FIFOs and anything else are
// not. A kept entry is recorded: the caller must then keep it.
func (c *Checker) Check(h *tar.Header) string {
	name, err := Name(h.Name)
	if err != nil {
		return err.Error()
	}
	if name == "" {
		return "the folder itself"
	}
	h.Name = name
	if c.kept == nil {
		c.kept, c.refused = map[string]byte{}, map[string]bool{}
	}
	why := c.check(h)
	if why != "" && h.Typeflag != tar.TypeDir {
		c.refused[name] = true
	}
	return why
}

func (c *Checker) check(h *tar.Header) string {
	name := h.Name
	if len(c.kept) >= MaxEntries {
		return fmt.Sprintf("more than %d entries", MaxEntries)
	}
	if _, dup := c.kept[name]; dup {
		return "named twice in the archive"
	}
	// Nothing is written under a link or a file: extracting it would go
	// where the link points, or fail.
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if t, ok := c.kept[p]; ok && t != tar.TypeDir || c.refused[p] {
			return fmt.Sprintf("its parent %s is not a folder", p)
		}
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			// Its holes would be written out as zeros: a few bytes of
			// archive could fill a disk.
			return "a sparse file"
		}
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		if h.Size < 0 {
			return fmt.Sprintf("negative size %d", h.Size)
		}
		h.Typeflag = tar.TypeReg
	case tar.TypeDir:
	case tar.TypeSymlink:
		if len(h.Linkname) > MaxName {
			return fmt.Sprintf("a link target of %d bytes, max %d", len(h.Linkname), MaxName)
		}
		if _, ok := Inside(name, h.Linkname); !ok {
			return fmt.Sprintf("a symbolic link to %s, outside the folder; links are not followed", Quote(h.Linkname))
		}
	case tar.TypeLink:
		target, err := Name(h.Linkname)
		if err != nil {
			return fmt.Sprintf("a hard link: %v", err)
		}
		if c.kept[target] != tar.TypeReg {
			return fmt.Sprintf("a hard link to %s, which is not a file kept before it", Quote(h.Linkname))
		}
		h.Linkname = target
	case tar.TypeChar, tar.TypeBlock:
		return "a device"
	case tar.TypeFifo:
		return "a FIFO"
	default:
		return fmt.Sprintf("an entry of type %q, which is neither a file, a folder nor a link", h.Typeflag)
	}
	c.kept[name] = h.Typeflag
	return ""
}

// Kept reports whether name (clean) was kept, and as what.
func (c *Checker) Kept(name string) (byte, bool) {
	t, ok := c.kept[name]
	return t, ok
}

// Quote is how notes name a path: as is when plain, quoted when it holds
// anything a log line should not carry raw (spaces, control characters,
// quotes, bytes that are not UTF-8).
func Quote(s string) string {
	for _, r := range s {
		if r <= ' ' || r == '"' || r == '\\' || r == 0x7f || r == utf8.RuneError {
			return fmt.Sprintf("%q", s)
		}
	}
	return s
}
