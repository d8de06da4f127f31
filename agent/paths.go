package agent

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-units"

	"github.com/forge-ci/forge/internal/safetar"
	"github.com/forge-ci/forge/wire"
)

// PathReader is what ReadPaths needs of the node's engine: a stat and the
// archive of a path in a container (HEAD and GET
// /containers/{id}/archive). *client.Client satisfies it.
type PathReader interface {
	ContainerStatPath(ctx context.Context, id, path string) (container.PathStat, error)
	CopyFromContainer(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error)
}

// PathsRequest names what ReadPaths copies out of a container.
type PathsRequest struct {
	// Root is the absolute folder, in the container, that Patterns are
	// relative to, that the archive's names are relative to, and that no
	// entry or link may leave.
	Root string
	// Patterns are clean relative paths or globs (path.Match, component
	// by component); "." is Root whole. A match that is a folder brings
	// what is under it.
	Patterns []string
	// MaxBytes bounds the archive written: the file that would pass it is
	// cut, and nothing is read after it.
	MaxBytes int64
	// ScanAllowance bounds what is read out of the engine beyond
	// MaxBytes while looking for matches.
	ScanAllowance int64
}

// PathsResult says what ReadPaths wrote.
type PathsResult struct {
	Size  int64    // bytes of the archive
	Files int      // regular files and hard links kept
	Bytes int64    // their bytes
	Cut   bool     // a file was cut at MaxBytes
	Notes []string // what was skipped or cut, one line each
}

// errLinkOnTheWay: a folder on the way to a path is a symbolic link,
// which the engine would follow.
var errLinkOnTheWay = errors.New("links are not followed")

// errScanned stops a read of the engine's archive that passed the scan
// bound.
var errScanned = errors.New("scan bound reached")

// ReadPaths writes to w one tar of the paths req names in container id,
// read through d as an untrusted archive (DESIGN §5, PROTOCOL.md §6.5):
// names relative to req.Root, no absolute name, no "..", no link that
// leaves Root, no device or FIFO, at most req.MaxBytes. What it leaves
// out or cuts is a note in the result, not an error; errors are the
// engine's or w's. The container should be stopped: its files must not
// change while they are read.
func ReadPaths(ctx context.Context, d PathReader, id string, req PathsRequest, w io.Writer) (PathsResult, error) {
	if !path.IsAbs(req.Root) {
		return PathsResult{}, fmt.Errorf("folder %q is not absolute", req.Root)
	}
	r := &pathsReader{ctx: ctx, d: d, id: id, root: path.Clean(req.Root), max: req.MaxBytes,
		scanMax: req.MaxBytes + req.ScanAllowance, stats: map[string]error{},
		cw: &countWriter{w: w}, seen: map[string]bool{}}
	r.tw = tar.NewWriter(r.cw)
	for _, p := range req.Patterns {
		if r.stopped != "" {
			r.note("%s: not looked for: %s", safetar.Quote(p), r.stopped)
			continue
		}
		if err := r.pattern(p); err != nil {
			return r.res, err
		}
	}
	if err := r.tw.Close(); err != nil {
		return r.res, fmt.Errorf("write archive: %w", err)
	}
	r.res.Size = r.cw.n
	r.res.Notes = r.notes.lines()
	return r.res, nil
}

type pathsReader struct {
	ctx          context.Context
	d            PathReader
	id, root     string
	max, scanMax int64
	stats        map[string]error // folder -> why it may not be walked through (nil: it may)
	scanned      int64            // bytes read out of the engine

	copying bool     // a kept file is being copied: the scan bound waits
	alone   []string // hard links to files not kept, to copy on their own

	cw      *countWriter
	tw      *tar.Writer
	buf     []byte // the files' copy buffer (copyN)
	chk     safetar.Checker
	seen    map[string]bool // names written, by any pattern
	res     PathsResult
	notes   noteList
	stopped string // why nothing more is read: the cap or the scan bound
}

func (r *pathsReader) note(format string, args ...any) { r.notes.add(fmt.Sprintf(format, args...)) }

// pattern copies the matches of one pattern.
func (r *pathsReader) pattern(p string) error {
	pat, err := cleanPattern(p)
	if err != nil {
		r.note("%s: skipped: %v", safetar.Quote(p), err)
		return nil
	}
	comps := split(pat)
	lit := 0 // leading components without glob characters
	for lit < len(comps) && !hasMeta(comps[lit]) {
		lit++
	}
	base := strings.Join(comps[:lit], "/")
	if pat == "." {
		base = "" // the root whole
	}
	// The engine follows every symbolic link on the way to the path it
	// archives, out of the folder if it leads there: none may be a link.
	// The last one is archived as itself when the whole pattern is
	// plain, and must be a folder otherwise.
	through := r.root
	if base != "" && lit == len(comps) {
		through = path.Join(r.root, path.Dir(base))
	} else if base != "" {
		through = path.Join(r.root, base)
	}
	if err := r.walkable(through); err != nil {
		if errdefs.IsNotFound(err) {
			r.note("%s matches nothing", safetar.Quote(p))
			return nil
		}
		if errors.Is(err, errLinkOnTheWay) {
			r.note("%s: skipped: %v", safetar.Quote(p), err)
			return nil
		}
		return err
	}
	rc, _, err := r.d.CopyFromContainer(r.ctx, r.id, path.Join(r.root, base))
	if errdefs.IsNotFound(err) {
		r.note("%s matches nothing", safetar.Quote(p))
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s of container %s: %w", path.Join(r.root, base), r.id, err)
	}
	defer rc.Close()
	matched, err := r.copyMatches(tar.NewReader(r.scan(rc)), base, comps)
	if err == nil {
		err = r.copyAlone()
	}
	switch {
	case errors.Is(err, errScanned):
		r.stopped = fmt.Sprintf("more than %s was read out of the container while looking for matches", sizeText(r.scanMax))
		r.note("%s: stopped: %s", safetar.Quote(p), r.stopped)
		return nil
	case err != nil:
		return err
	case matched == 0:
		r.note("%s matches nothing", safetar.Quote(p))
	}
	return nil
}

// copyMatches copies the entries of one archive of the engine (of folder
// base under the root) that match comps, and counts them.
func (r *pathsReader) copyMatches(tr *tar.Reader, base string, comps []string) (int, error) {
	matched := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return matched, nil
		}
		if err != nil {
			if r.ctx.Err() != nil {
				return matched, r.ctx.Err()
			}
			return matched, fmt.Errorf("read archive of container %s: %w", r.id, err)
		}
		name, err := rebase(base, h.Name)
		if err != nil {
			r.note("%s: skipped: %v", safetar.Quote(h.Name), err)
			continue
		}
		if !matches(comps, name) {
			continue
		}
		matched++
		if r.seen[name] {
			continue // an earlier pattern took it, or the archive names it twice
		}
		r.seen[name] = true
		if h.Typeflag == tar.TypeLink {
			// The engine names the first of a file's links in the same
			// archive's terms.
			if h.Linkname, err = rebase(base, h.Linkname); err != nil {
				r.note("%s: skipped: a hard link: %v", safetar.Quote(name), err)
				continue
			}
		}
		h.Name = name
		if t, _ := r.chk.Kept(h.Linkname); h.Typeflag == tar.TypeLink && t != tar.TypeReg {
			// A hard link to a file this pattern does not match: the
			// engine archives the file alone as a file of its own.
			r.alone = append(r.alone, name)
			continue
		}
		if why := r.chk.Check(h); why != "" {
			r.note("%s: skipped: %s", safetar.Quote(name), why)
			continue
		}
		if err := r.write(h, tr); err != nil {
			return matched, err
		}
		if r.stopped != "" {
			return matched, nil
		}
	}
}

// copyAlone copies the files queued in r.alone, each from an archive of
// its own. The folders on their way are those of an archive just read,
// where they were folders, not links.
func (r *pathsReader) copyAlone() error {
	queued := r.alone
	r.alone = nil
	for _, name := range queued {
		if r.stopped != "" {
			r.note("%s: left out: %s", safetar.Quote(name), r.stopped)
			continue
		}
		rc, _, err := r.d.CopyFromContainer(r.ctx, r.id, path.Join(r.root, name))
		if errdefs.IsNotFound(err) {
			r.note("%s: skipped: gone while it was read", safetar.Quote(name))
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s of container %s: %w", path.Join(r.root, name), r.id, err)
		}
		tr := tar.NewReader(r.scan(rc))
		h, err := tr.Next()
		if err == nil {
			h.Name = name
			if why := r.chk.Check(h); why != "" {
				r.note("%s: skipped: %s", safetar.Quote(name), why)
			} else {
				err = r.write(h, tr)
			}
		}
		rc.Close()
		if err != nil {
			return fmt.Errorf("read %s of container %s: %w", path.Join(r.root, name), r.id, err)
		}
	}
	return nil
}

// write copies one kept entry, cutting a file at the size bound.
func (r *pathsReader) write(h *tar.Header, tr *tar.Reader) error {
	out := &tar.Header{Typeflag: h.Typeflag, Name: h.Name, Linkname: h.Linkname, Mode: h.Mode & 0o777,
		ModTime: h.ModTime.Truncate(1e9), Format: tar.FormatPAX}
	if h.Typeflag == tar.TypeDir {
		out.Name += "/"
	}
	if h.Typeflag == tar.TypeReg {
		out.Size = h.Size
		// Room for this header, the file's padding and the archive's end.
		room := r.max - r.cw.n - headerCost(out) - 1024 - 511
		if out.Size > room {
			out.Size = max(room, 0)
			out.PAXRecords = map[string]string{safetar.CutRecord: strconv.FormatInt(h.Size, 10)}
			r.res.Cut = true
			r.stopped = fmt.Sprintf("the size bound (%s) is reached", sizeText(r.max))
			r.note("%s: cut at %s of %s: %s", safetar.Quote(h.Name), sizeText(out.Size), sizeText(h.Size), r.stopped)
		}
	} else if r.cw.n+headerCost(out)+1024 > r.max {
		r.stopped = fmt.Sprintf("the size bound (%s) is reached", sizeText(r.max))
		r.note("%s: left out: %s", safetar.Quote(h.Name), r.stopped)
		return nil
	}
	if err := r.tw.WriteHeader(out); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if out.Typeflag == tar.TypeReg {
		// What is kept is bounded by max already: the scan bound counts,
		// and stops, only what is skipped.
		r.copying = true
		if r.buf == nil {
			r.buf = make([]byte, fileBuffer)
		}
		_, err := copyN(r.tw, tr, out.Size, r.buf)
		r.copying = false
		if err != nil {
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			return fmt.Errorf("copy %s: %w", h.Name, err)
		}
	}
	if out.Typeflag == tar.TypeReg || out.Typeflag == tar.TypeLink {
		r.res.Files++
		r.res.Bytes += out.Size
	}
	return nil
}

// headerCost is a bound on the bytes a header takes in the archive: its
// block, and a PAX header (a block and its records) for long names, large
// sizes or times, and the cut record.
func headerCost(h *tar.Header) int64 {
	const block = 512
	records := int64(len(h.Name)+len(h.Linkname)) + 4*64
	return 2*block + (records+block-1)/block*block
}

// walkable checks that no folder from "/" down to dir is a symbolic link,
// asking the engine about each once.
func (r *pathsReader) walkable(dir string) error {
	at := "/"
	for _, c := range split(strings.TrimPrefix(dir, "/")) {
		at = path.Join(at, c)
		err, done := r.stats[at]
		if !done {
			var st container.PathStat
			st, err = r.d.ContainerStatPath(r.ctx, r.id, at)
			switch {
			case err != nil && !errdefs.IsNotFound(err):
				err = fmt.Errorf("stat %s in container %s: %w", at, r.id, err)
			case err == nil && st.Mode&os.ModeSymlink != 0:
				err = fmt.Errorf("%s is a symbolic link (to %s); %w", at, safetar.Quote(st.LinkTarget), errLinkOnTheWay)
			case err == nil && !st.Mode.IsDir():
				err = fmt.Errorf("%w: %s is not a folder", errdefs.ErrNotFound, at)
			}
			r.stats[at] = err
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// cleanPattern checks a pattern of PathsRequest and cleans it.
func cleanPattern(p string) (string, error) {
	clean, err := safetar.Name(p)
	if err != nil {
		return "", err
	}
	if clean == "" {
		return ".", nil
	}
	if _, err := path.Match(clean, ""); err != nil {
		return "", fmt.Errorf("not a valid glob: %w", err)
	}
	return clean, nil
}

// rebase turns a name of the engine's archive of base into a name
// relative to the root: the archive names its entries from base's last
// element ("dist/a.txt" for base "out/dist"), or from the root's when base
// is the root itself.
func rebase(base, name string) (string, error) {
	clean, err := safetar.Name(name)
	if err != nil {
		return "", err
	}
	_, rest, _ := strings.Cut(clean, "/")
	if base == "" {
		return rest, nil
	}
	return path.Join(path.Dir(base), clean), nil
}

// matches reports whether name, or a folder it is in, matches the
// pattern's components. The root itself ("") matches nothing.
func matches(comps []string, name string) bool {
	if name == "" {
		return false
	}
	if len(comps) == 1 && comps[0] == "." {
		return true
	}
	parts := split(name)
	if len(parts) < len(comps) {
		return false
	}
	for i, c := range comps {
		if ok, _ := path.Match(c, parts[i]); !ok {
			return false
		}
	}
	return true
}

func split(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

func hasMeta(s string) bool { return strings.ContainsAny(s, `*?[\`) }

// noteList keeps the first wire.MaxArtifactNotes notes, the last of them
// saying how many more there were.
type noteList struct {
	kept  []string
	extra int
}

func (l *noteList) add(s string) {
	s = wire.CutNote(s, wire.MaxNoteSize, "...")
	if len(l.kept) < wire.MaxArtifactNotes-1 {
		l.kept = append(l.kept, s)
		return
	}
	l.extra++
}

func (l *noteList) lines() []string {
	switch l.extra {
	case 0:
		return l.kept
	case 1:
		return append(l.kept, "and 1 more line like these")
	}
	return append(l.kept, fmt.Sprintf("and %d more lines like these", l.extra))
}

// countWriter counts what is written through it, and fails past max
// (errOverBound) when max is set.
type countWriter struct {
	w   io.Writer
	n   int64
	max int64 // 0: no bound
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.max > 0 && c.n+int64(len(p)) > c.max {
		return 0, errOverBound
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// scan counts what is read out of the engine through it, and fails past
// the scan bound unless a kept file is being copied.
func (r *pathsReader) scan(rc io.Reader) io.Reader { return &scanReader{r: rc, p: r} }

type scanReader struct {
	r io.Reader
	p *pathsReader
}

func (s *scanReader) Read(b []byte) (int, error) {
	if !s.p.copying {
		left := s.p.scanMax - s.p.scanned
		if left <= 0 {
			return 0, errScanned
		}
		if int64(len(b)) > left {
			b = b[:left]
		}
	}
	n, err := s.r.Read(b)
	s.p.scanned += int64(n)
	return n, err
}

// sizeText writes n bytes in binary units (1GiB, 1.5KiB).
func sizeText(n int64) string { return units.BytesSize(float64(n)) }
