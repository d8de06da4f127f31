package wire

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// FeatureCache in Hello.Features: the agent restores and saves caches
// (PROTOCOL.md §6.8). A coordinator sends Launch.Cache only to agents that
// name it, so an older agent is never sent bytes it would not read.
const FeatureCache = "cache"

// Limits of the cache messages (PROTOCOL.md §5.22, §5.23, §10).
const (
	MaxCachePaths = 32      // paths of one build's cache
	MaxCachePath  = 4096    // bytes of one path (PATH_MAX)
	MaxCacheNotes = 64      // notes of one CacheSave
	MaxCacheNote  = 1024    // bytes of one note
	cacheNoteCut  = "[...]" // marks a note cut to MaxCacheNote
)

// LaunchCache is a Launch's cache part (PROTOCOL.md §5.6, §6.8): which
// container paths are the build's cache, the archive of them restored
// before the source, and whether to send them back after a successful
// exit.
type LaunchCache struct {
	// Paths are absolute, clean container paths, at most MaxCachePaths.
	Paths []string `json:"paths"`
	// Size is how many bytes of cache tar follow the executor on the
	// stream, before the source; 0: nothing to restore.
	Size int64 `json:"size"`
	// Save asks the agent to send the paths back (CacheSave) once the
	// container has exited with code 0, before it reports the exit.
	Save bool `json:"save"`
	// MaxBytes bounds the tar the agent sends back; required with Save.
	MaxBytes int64 `json:"max_bytes"`
}

// CacheSave opens a cache stream, which the agent opens (PROTOCOL.md
// §5.22, §6.8): the tar of a build's cache paths follows as Size raw
// bytes.
type CacheSave struct {
	BuildID     string `json:"build_id"`
	ContainerID string `json:"container_id"`
	// Size is the tar's length; 0 when nothing is sent (the notes say why).
	Size int64 `json:"size"`
	// Notes are lines for the build's log: paths that were missing,
	// entries skipped, a tar over the bound.
	Notes []string `json:"notes,omitempty"`
}

// CacheReady lets the agent send a CacheSave's bytes (PROTOCOL.md §5.24):
// the coordinator takes them.
type CacheReady struct{}

// CacheSaved answers CacheSave (PROTOCOL.md §5.23).
type CacheSaved struct {
	// Digest is the stored tar's "sha256:<hex>"; "" when nothing was
	// stored (Size 0).
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

func (m LaunchCache) validate() error { return m.validateIn(TypeLaunch) }

// validateIn checks m as the cache part of a message of type typ.
func (m LaunchCache) validateIn(typ string) error {
	if len(m.Paths) == 0 {
		return invalid(typ, "cache without paths")
	}
	if len(m.Paths) > MaxCachePaths {
		return invalid(typ, "cache has %d paths, max %d", len(m.Paths), MaxCachePaths)
	}
	for _, p := range m.Paths {
		if err := CheckCachePath(p); err != nil {
			return invalid(typ, "cache path: %v", err)
		}
	}
	if m.Size < 0 {
		return invalid(typ, "negative cache size %d", m.Size)
	}
	if m.Save && m.MaxBytes <= 0 {
		return invalid(typ, "cache save with max_bytes %d, want > 0", m.MaxBytes)
	}
	return nil
}

// CheckCachePath checks one cache path: absolute, clean, not the root,
// at most MaxCachePath bytes, no NUL.
func CheckCachePath(p string) error {
	switch {
	case len(p) > MaxCachePath:
		return fmt.Errorf("a path of %d bytes, max %d", len(p), MaxCachePath)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("%q contains NUL", p)
	case !path.IsAbs(p) || path.Clean(p) != p:
		return fmt.Errorf("%q is not an absolute, clean path", p)
	case p == "/":
		return errors.New("the root cannot be a cache")
	}
	return nil
}

// Validate checks the ids, the size and the notes.
func (m CacheSave) Validate() error {
	if err := requireIDs(TypeCacheSave, m.BuildID, m.ContainerID); err != nil {
		return err
	}
	if m.Size < 0 {
		return invalid(TypeCacheSave, "negative size %d", m.Size)
	}
	if len(m.Notes) > MaxCacheNotes {
		return invalid(TypeCacheSave, "%d notes, max %d", len(m.Notes), MaxCacheNotes)
	}
	for _, n := range m.Notes {
		if n == "" || len(n) > MaxCacheNote {
			return invalid(TypeCacheSave, "a note of %d bytes, want 1 to %d", len(n), MaxCacheNote)
		}
	}
	return nil
}

// Validate checks the digest, when one is given, and the size.
func (m CacheSaved) Validate() error {
	if m.Size < 0 {
		return invalid(TypeCacheSaved, "negative size %d", m.Size)
	}
	if m.Digest == "" {
		return nil
	}
	if _, err := parseDigest(m.Digest); err != nil {
		return invalid(TypeCacheSaved, "%v", err)
	}
	return nil
}

// CacheNote cuts a note for CacheSave to MaxCacheNote bytes (CutNote).
func CacheNote(s string) string {
	if s == "" {
		return "(empty note)"
	}
	return CutNote(s, MaxCacheNote, cacheNoteCut)
}

// CutNote makes s a note of at most max bytes as the peer decodes it:
// valid UTF-8 (JSON would turn each invalid byte into the 3 bytes of
// U+FFFD on the way, past the bound), and cut on a character, ending with
// mark, when longer.
func CutNote(s string, max int, mark string) string {
	s = strings.ToValidUTF8(s, string(utf8.RuneError))
	if len(s) <= max {
		return s
	}
	cut := max - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
