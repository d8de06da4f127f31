package wire

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// ErrUnsafeEntry: an entry of a cache tar breaks a rule of PROTOCOL.md
// §6.8: its name is absolute, climbs with "..", or lies outside the
// cache's paths; it is a link that leaves its cache path; or it is not a
// file, a directory or a link.
var ErrUnsafeEntry = errors.New("wire: unsafe cache entry")

// CheckCacheEntry applies PROTOCOL.md §6.8's rules to one header of a
// cache tar whose paths are paths (absolute, clean), and returns the path
// the entry belongs to. Both sides check: the agent as it reads a
// container, the coordinator as it stores, the agent again as it restores.
func CheckCacheEntry(paths []string, h *tar.Header) (root string, err error) {
	full, err := cacheName(h.Name)
	if err != nil {
		return "", err
	}
	root = cacheRoot(paths, full)
	if root == "" {
		return "", fmt.Errorf("%w: %q is outside the cache's paths", ErrUnsafeEntry, h.Name)
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeDir:
	case tar.TypeSymlink:
		target := h.Linkname
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(full), target)
		}
		if target = path.Clean(target); !within(root, target) || strings.ContainsRune(h.Linkname, 0) || h.Linkname == "" {
			return "", fmt.Errorf("%w: %q links to %q, outside %s", ErrUnsafeEntry, h.Name, h.Linkname, root)
		}
	case tar.TypeLink:
		target, err := cacheName(h.Linkname)
		if err != nil {
			return "", fmt.Errorf("hard link %q: %w", h.Name, err)
		}
		if !within(root, target) {
			return "", fmt.Errorf("%w: %q is a hard link to %q, outside %s", ErrUnsafeEntry, h.Name, h.Linkname, root)
		}
	default:
		return "", fmt.Errorf("%w: %q is of type %q, not a file, directory or link", ErrUnsafeEntry, h.Name, h.Typeflag)
	}
	if h.Size < 0 || (h.Typeflag != tar.TypeReg && h.Size != 0) {
		return "", fmt.Errorf("%w: %q has size %d", ErrUnsafeEntry, h.Name, h.Size)
	}
	return root, nil
}

// CacheHeader is the header a cache entry is written with, on saving and
// on restoring: name, type, permissions (no set-user-ID or set-group-ID
// bit), size, owner and whole-second time, and nothing else (no extended
// attributes, so no file capabilities travel from build to build).
func CacheHeader(h *tar.Header) *tar.Header {
	return &tar.Header{
		Name: h.Name, Typeflag: h.Typeflag, Linkname: h.Linkname, Size: h.Size,
		Mode: h.Mode & 0o1777, Uid: h.Uid, Gid: h.Gid,
		ModTime: h.ModTime.Truncate(time.Second),
	}
}

// cacheName is the absolute container path of a relative entry name,
// refusing names that are absolute, empty, unclean or climb with "..".
func cacheName(name string) (string, error) {
	trimmed := strings.TrimSuffix(name, "/")
	switch {
	case trimmed == "" || strings.ContainsRune(name, 0):
		return "", fmt.Errorf("%w: empty name or NUL in %q", ErrUnsafeEntry, name)
	case path.IsAbs(name):
		return "", fmt.Errorf("%w: %q is absolute", ErrUnsafeEntry, name)
	case strings.Contains("/"+trimmed+"/", "/../") || path.Clean(trimmed) != trimmed:
		return "", fmt.Errorf("%w: %q is not a clean name (.., ., or //)", ErrUnsafeEntry, name)
	}
	return "/" + trimmed, nil
}

// cacheRoot is the path of paths that holds p, or "".
func cacheRoot(paths []string, p string) string {
	for _, r := range paths {
		if within(r, p) {
			return r
		}
	}
	return ""
}

func within(root, p string) bool { return p == root || strings.HasPrefix(p, root+"/") }
