// Package artifacts keeps the files builds leave behind (DESIGN §2, step 8),
// as agents copy them out of stopped containers: untrusted archives,
// checked entry by entry again here (internal/safetar). Each build's
// artifacts are a folder under Dir named by the build's id: files/ holds
// the regular files and folders, never a link; index.json lists every
// entry, symbolic links included, which exist only there. Nothing is read
// from disk but through that list and an os.Root on files/.
package artifacts

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/internal/atomicfile"
	"github.com/forge-ci/forge/internal/safetar"
)

// Store keeps builds' artifacts under Dir.
type Store struct {
	Dir string
}

// Entry is one artifact: a file, or a symbolic link (Link set, no bytes of
// its own) whose target is another artifact's path.
type Entry struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	Mode int64  `json:"mode"` // permission bits
	// Link is a symbolic link's target, relative to its folder.
	Link string `json:"link,omitempty"`
	// OriginalSize is set when the file was cut at the size bound: its
	// size in the build's container.
	OriginalSize int64 `json:"original_size,omitempty"`
}

// index is index.json.
type index struct {
	Stored  time.Time `json:"stored"`
	Entries []Entry   `json:"entries"`
}

// ErrNotFound: the build has no such artifact (or none at all).
var ErrNotFound = errors.New("no such artifact")

// incoming holds builds' artifacts while they arrive, and what is being
// replaced or deleted; nothing in it is served.
const incoming = ".incoming"

// maxRefused bounds the notes of what Put refused.
const maxRefused = 20

func (s *Store) dir(id string) string { return filepath.Join(s.Dir, id) }

// Put stores the tar read from r as the build's artifacts, replacing any
// it had, keeping what passes safetar's checks: what does not is named in
// the result. It reads r to the end of the archive, and writes at most
// max bytes of files. A broken archive is an error, and stores nothing.
func (s *Store) Put(buildID string, r io.Reader, max int64) (coordinator.ArtifactsStored, error) {
	var res coordinator.ArtifactsStored
	if !coordinator.ValidBuildID(buildID) {
		return res, fmt.Errorf("artifacts: build id %q is not valid", buildID)
	}
	tmp, err := s.scratch(buildID)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp) // gone by rename when all went well
	files := filepath.Join(tmp, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		return res, fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	root, err := os.OpenRoot(files)
	if err != nil {
		return res, fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	defer root.Close()
	idx := index{Stored: time.Now().UTC(), Entries: []Entry{}}
	sizes := map[string]int64{}
	var written int64 // bytes of files on disk (a hard link adds none)
	var chk safetar.Checker
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("artifacts of %s: read archive: %w", buildID, err)
		}
		raw := h.Name
		if why := chk.Check(h); why != "" {
			if len(res.Refused) < maxRefused {
				res.Refused = append(res.Refused, safetar.Quote(raw)+": "+why)
			}
			continue
		}
		if h.Typeflag == tar.TypeReg {
			if written += h.Size; written > max {
				return res, fmt.Errorf("artifacts of %s: %s passes the bound of %d bytes", buildID, h.Name, max)
			}
		}
		e, err := store(root, h, tr, sizes)
		if err != nil {
			return res, fmt.Errorf("artifacts of %s: %s: %w", buildID, h.Name, err)
		}
		if e == nil {
			continue // a folder
		}
		idx.Entries = append(idx.Entries, *e)
		if e.Link == "" {
			res.Files++
			res.Bytes += e.Size
		}
	}
	sort.Slice(idx.Entries, func(i, j int) bool { return idx.Entries[i].Path < idx.Entries[j].Path })
	raw, err := json.Marshal(idx)
	if err != nil {
		return res, err
	}
	if err := atomicfile.Write(filepath.Join(tmp, "index.json"), raw, 0o644); err != nil {
		return res, fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	return res, s.swap(buildID, tmp)
}

// store writes one checked entry under root; nil for a folder.
func store(root *os.Root, h *tar.Header, tr io.Reader, sizes map[string]int64) (*Entry, error) {
	e := &Entry{Path: h.Name, Mode: h.Mode & 0o777}
	if d := path.Dir(h.Name); h.Typeflag != tar.TypeSymlink && d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		return nil, root.MkdirAll(h.Name, 0o755)
	case tar.TypeSymlink:
		e.Link = h.Linkname // a record only: no link on this disk
		return e, nil
	case tar.TypeLink:
		e.Size = sizes[h.Linkname]
		return e, root.Link(h.Linkname, h.Name)
	}
	f, err := root.OpenFile(h.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(f, tr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	e.Size = n
	if v, ok := h.PAXRecords[safetar.CutRecord]; ok {
		if orig, perr := strconv.ParseInt(v, 10, 64); perr == nil && orig > n {
			e.OriginalSize = orig
		}
	}
	sizes[h.Name] = n
	return e, nil
}

// scratch makes a new folder under incoming for buildID.
func (s *Store) scratch(buildID string) (string, error) {
	var b [6]byte
	rand.Read(b[:])
	dir := filepath.Join(s.Dir, incoming, buildID+"-"+hex.EncodeToString(b[:]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("artifacts: %w", err)
	}
	return dir, nil
}

// swap puts the folder tmp in the build's place, and deletes what was
// there.
func (s *Store) swap(buildID, tmp string) error {
	old, err := s.scratch(buildID)
	if err != nil {
		return err
	}
	defer os.RemoveAll(old)
	if err := os.Rename(s.dir(buildID), filepath.Join(old, "old")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	if err := os.Rename(tmp, s.dir(buildID)); err != nil {
		return fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	return nil
}

// List returns the build's artifacts by path; none (and no error) for a
// build that has none.
func (s *Store) List(buildID string) ([]Entry, error) {
	if !coordinator.ValidBuildID(buildID) {
		return []Entry{}, nil
	}
	raw, err := os.ReadFile(filepath.Join(s.dir(buildID), "index.json"))
	if errors.Is(err, os.ErrNotExist) {
		return []Entry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	var idx index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("artifacts of %s: index: %w", buildID, err)
	}
	return idx.Entries, nil
}

// maxHops bounds the links Open follows from one name to a file.
const maxHops = 8

// Open opens the build's artifact name for reading: a file, or a link
// that leads, among the build's artifacts, to one. It returns the file's
// entry (the link's target's, for a link).
func (s *Store) Open(buildID, name string) (*os.File, Entry, error) {
	if !fs.ValidPath(name) || name == "." {
		return nil, Entry{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	list, err := s.List(buildID)
	if err != nil {
		return nil, Entry{}, err
	}
	byPath := make(map[string]Entry, len(list))
	for _, e := range list {
		byPath[e.Path] = e
	}
	e, ok := byPath[name]
	for hops := 0; ok && e.Link != ""; hops++ {
		at, inside := safetar.Inside(e.Path, e.Link)
		if !inside || hops == maxHops {
			ok = false
			break
		}
		e, ok = byPath[at]
	}
	if !ok {
		return nil, Entry{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	root, err := os.OpenRoot(filepath.Join(s.dir(buildID), "files"))
	if err != nil {
		return nil, Entry{}, fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	defer root.Close()
	f, err := root.Open(e.Path)
	if err != nil {
		return nil, Entry{}, fmt.Errorf("artifacts of %s: %w", buildID, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, Entry{}, fmt.Errorf("%w: %q is not a file", ErrNotFound, name)
	}
	return f, e, nil
}

// WriteEmptyTarGz writes a gzipped tar with no entries.
func WriteEmptyTarGz(w io.Writer) error {
	zw := gzip.NewWriter(w)
	if err := tar.NewWriter(zw).Close(); err != nil {
		return err
	}
	return zw.Close()
}

// WriteTarGz writes all of the build's artifacts to w as one gzipped tar:
// files, and symbolic links as links. A build without artifacts gives an
// empty archive.
func (s *Store) WriteTarGz(buildID string, w io.Writer) error {
	list, err := s.List(buildID)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	for _, e := range list {
		if err := s.addTo(tw, buildID, e); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func (s *Store) addTo(tw *tar.Writer, buildID string, e Entry) error {
	h := &tar.Header{Name: e.Path, Mode: e.Mode, Typeflag: tar.TypeSymlink, Linkname: e.Link, Format: tar.FormatPAX}
	if e.Link != "" {
		return tw.WriteHeader(h)
	}
	f, _, err := s.Open(buildID, e.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	h.Typeflag, h.Linkname, h.Size, h.ModTime = tar.TypeReg, "", fi.Size(), fi.ModTime().Truncate(time.Second)
	if h.Mode == 0 {
		h.Mode = 0o644
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// staleIncoming is how old a folder under incoming must be for Prune to
// delete it: a coordinator that stopped mid-transfer left it.
const staleIncoming = time.Hour

// Prune deletes the artifacts of builds stored before olderThan that over
// says have ended (in the database: final, and finished before
// olderThan), and what an interrupted transfer left. It returns how many
// builds' artifacts it deleted.
func (s *Store) Prune(ctx context.Context, olderThan time.Time, over func(ctx context.Context, id string) (bool, error)) (int, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("prune artifacts: %w", err)
	}
	s.pruneIncoming()
	var n int
	var errs []error
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !coordinator.ValidBuildID(id) || ctx.Err() != nil {
			continue
		}
		fi, err := os.Stat(filepath.Join(s.dir(id), "index.json"))
		if err == nil && !fi.ModTime().Before(olderThan) {
			continue
		}
		ended, err := over(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("prune artifacts of %s: %w", id, err))
			continue
		}
		if !ended {
			continue
		}
		// Out of sight first, so no half-deleted folder is ever served.
		old, err := s.scratch(id)
		if err == nil {
			err = os.Rename(s.dir(id), filepath.Join(old, "old"))
		}
		if err == nil {
			err = os.RemoveAll(old)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("prune artifacts of %s: %w", id, err))
			continue
		}
		n++
	}
	return n, errors.Join(append(errs, ctx.Err())...)
}

func (s *Store) pruneIncoming() {
	dir := filepath.Join(s.Dir, incoming)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleIncoming {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
