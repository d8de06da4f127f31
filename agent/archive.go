package agent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/forge-ci/forge/forgexec"
)

// Paths of what a Launch puts into a build container (PROTOCOL.md §6.2).
// The executor's path is the service's command, fixed by the coordinator's
// service spec.
const (
	ExecutorPath = "/forgexec"
	SpecPath     = "/.forge/build.json"
	SecretsPath  = forgexec.SecretsPath
)

// Payload is what one Launch injects into a container: the executor, the
// build spec, and optionally a tar stream of the source tree, which is put
// under Workdir.
type Payload struct {
	Executor     io.Reader
	ExecutorSize int64
	Spec         []byte
	Workdir      string    // absolute; where the source tree goes
	Source       io.Reader // tar stream, or nil
	// Cache, when set, is a tar of the build's cache (PROTOCOL.md §6.8),
	// put in before the source; every entry must lie under CachePaths.
	Cache      io.Reader
	CachePaths []string
	// Secrets is the secrets file (forgexec.EncodeSecrets), nil when the
	// build has none. It goes in with mode 0400, owned by Owner, as does
	// /.forge/ (so the executor can remove it).
	Secrets []byte
	Owner   Owner
}

// WriteArchive writes p as one tar stream rooted at "/", the body of a
// single PUT /containers/{id}/archive?path=/. The executor comes first, the
// cache before the source, and the source last, re-rooted under Workdir
// (PROTOCOL.md §6.2).
func WriteArchive(w io.Writer, p Payload) error {
	if !path.IsAbs(p.Workdir) {
		return fmt.Errorf("workdir %q is not absolute", p.Workdir)
	}
	workdir := strings.TrimPrefix(path.Clean(p.Workdir), "/")
	// Whole seconds: a time with nanoseconds costs every entry a PAX
	// extended header (a record and a second 512-byte block to build and
	// send; 6 % of the agent's CPU per Launch, docs/benchmarks.md), and
	// nothing needs these files' times finer than the ustar field's
	// seconds.
	now := time.Now().Truncate(time.Second)
	tw := tar.NewWriter(w)
	hdr := func(name string, typ byte, mode, size int64, o Owner) error {
		return tw.WriteHeader(&tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: size, ModTime: now,
			Uid: o.UID, Gid: o.GID, Format: tar.FormatPAX})
	}
	var forgeDir Owner // /.forge/ is root's, but the secrets' owner's when there are secrets
	if p.Secrets != nil {
		forgeDir = p.Owner
	}
	if err := hdr(strings.TrimPrefix(ExecutorPath, "/"), tar.TypeReg, 0o755, p.ExecutorSize, Owner{}); err != nil {
		return err
	}
	if n, err := copyExecutor(tw, p.Executor, p.ExecutorSize); err != nil {
		return fmt.Errorf("executor: copied %d of %d bytes: %w", n, p.ExecutorSize, err)
	}
	if err := hdr(".forge/", tar.TypeDir, 0o755, 0, forgeDir); err != nil {
		return err
	}
	if err := hdr(strings.TrimPrefix(SpecPath, "/"), tar.TypeReg, 0o644, int64(len(p.Spec)), Owner{}); err != nil {
		return err
	}
	if _, err := tw.Write(p.Spec); err != nil {
		return err
	}
	if p.Secrets != nil {
		if err := hdr(strings.TrimPrefix(SecretsPath, "/"), tar.TypeReg, 0o400, int64(len(p.Secrets)), p.Owner); err != nil {
			return err
		}
		if _, err := tw.Write(p.Secrets); err != nil {
			return err
		}
	}
	if p.Cache != nil {
		if err := copyCache(tw, p.Cache, p.CachePaths); err != nil {
			return fmt.Errorf("cache: %w", err)
		}
	}
	if workdir != "" {
		// Every parent of the work directory, so the extraction does not
		// depend on what the image has.
		parts := strings.Split(workdir, "/")
		for i := range parts {
			if err := hdr(strings.Join(parts[:i+1], "/")+"/", tar.TypeDir, 0o755, 0, Owner{}); err != nil {
				return err
			}
		}
	}
	if p.Source != nil {
		if err := copySource(tw, tar.NewReader(p.Source), workdir); err != nil {
			return fmt.Errorf("source: %w", err)
		}
	}
	return tw.Close()
}

// copyExecutor copies size bytes of r into tw. The agent holds the
// executor in memory (a *bytes.Reader of exactly its size): that is
// written in one piece, straight from its bytes, rather than copied
// through io.CopyN's 32 KiB buffer first (a copy of the whole executor,
// 8 % of the agent's CPU per Launch in docs/benchmarks.md). Any other
// reader is copied as before.
func copyExecutor(tw *tar.Writer, r io.Reader, size int64) (int64, error) {
	if wt, ok := r.(interface {
		io.WriterTo
		Len() int
	}); ok && int64(wt.Len()) == size {
		return wt.WriteTo(tw)
	}
	return io.CopyN(tw, r, size)
}

// ErrUnsafePath is returned for a source entry that would land outside the
// work directory.
var ErrUnsafePath = errors.New("path leaves the work directory")

func copySource(tw *tar.Writer, tr *tar.Reader, workdir string) error {
	buf := make([]byte, fileBuffer)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, err := underDir(workdir, h.Name)
		if err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
		case tar.TypeLink:
			if h.Linkname, err = underDir(workdir, h.Linkname); err != nil {
				return err
			}
		default:
			continue // devices, fifos and the like have no place in a source tree
		}
		if h.Typeflag == tar.TypeDir {
			name += "/"
		}
		h.Name = name
		h.Uname, h.Gname = "", ""
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := copyN(tw, tr, h.Size, buf); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
	}
}

// fileBuffer is the size of the one buffer an archive's files are copied
// through.
const fileBuffer = 256 << 10

// copyN is io.CopyN through buf. One buffer serves all of an archive's
// files: io.CopyN makes one per call, and archives of thousands of files
// then keep the collector busy while bytes wait (docs/benchmarks.md).
func copyN(w io.Writer, r io.Reader, n int64, buf []byte) (int64, error) {
	written, err := io.CopyBuffer(w, io.LimitReader(r, n), buf)
	if written == n {
		return n, nil
	}
	if written < n && err == nil {
		err = io.EOF // as io.CopyN: the reader ended early
	}
	return written, err
}

// underDir joins a relative archive name onto dir, refusing names that are
// absolute or climb out with "..".
func underDir(dir, name string) (string, error) {
	clean := path.Clean("/" + name)
	if path.IsAbs(name) || strings.Contains("/"+name+"/", "/../") {
		return "", fmt.Errorf("%q: %w", name, ErrUnsafePath)
	}
	return strings.TrimPrefix(path.Join(dir, clean), "/"), nil
}
