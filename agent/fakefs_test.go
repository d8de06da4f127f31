package agent

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// ctrFS is a stopped container's file system as the engine's archive
// calls show it (measured on Docker 20.10, notes in paths.go): HEAD and
// GET /containers/{id}/archive follow every symbolic link on the way to a
// path, in the container's scope, but not the last element; an archive
// names entries from the path's last element, walks a folder in name
// order, and gives the second name of a file with several links as a hard
// link to the first. raw, when set for a path, is served as its archive
// instead: what a broken or hostile engine could send.
type ctrFS struct {
	mu    sync.Mutex
	nodes map[string]*fsNode // by clean absolute path
	raw   map[string][]byte
	gets  []string // paths archived, in order
	read  int64    // archive bytes served
}

type fsNode struct {
	typ   byte // tar type flag
	body  []byte
	size  int64 // for files of zeros (body nil): their size
	link  string
	inode int // files with the same non-zero inode are links of one file
}

func newCtrFS() *ctrFS {
	return &ctrFS{nodes: map[string]*fsNode{"/": {typ: tar.TypeDir}}, raw: map[string][]byte{}}
}

func (f *ctrFS) add(p string, n *fsNode) {
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if f.nodes[d] == nil {
			f.nodes[d] = &fsNode{typ: tar.TypeDir}
		}
	}
	f.nodes[p] = n
}

func (f *ctrFS) file(p, body string) { f.add(p, &fsNode{typ: tar.TypeReg, body: []byte(body)}) }
func (f *ctrFS) dir(p string)        { f.add(p, &fsNode{typ: tar.TypeDir}) }
func (f *ctrFS) symlink(p, to string) {
	f.add(p, &fsNode{typ: tar.TypeSymlink, link: to})
}

// resolve follows the links on the way to p (not its last element), in
// the container's scope, as the engine's ResolvePath does.
func (f *ctrFS) resolve(p string) (string, error) {
	dir, base := path.Split(path.Clean(p))
	at := "/"
	hops := 0
	comps := strings.Split(strings.Trim(dir, "/"), "/")
	for i := 0; i < len(comps); i++ {
		if comps[i] == "" {
			continue
		}
		next := path.Join(at, comps[i])
		n := f.nodes[next]
		if n == nil {
			return "", fmt.Errorf("%w: %s", errdefs.ErrNotFound, next)
		}
		if n.typ == tar.TypeSymlink {
			if hops++; hops > 40 {
				return "", fmt.Errorf("too many links at %s", next)
			}
			target := n.link
			if !path.IsAbs(target) {
				target = path.Join(at, target)
			}
			rest := append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), comps[i+1:]...)
			comps, i, at = rest, -1, "/"
			continue
		}
		at = next
	}
	return path.Join(at, base), nil
}

func (f *ctrFS) ContainerStatPath(ctx context.Context, id, p string) (container.PathStat, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.resolve(p)
	if err != nil {
		return container.PathStat{}, err
	}
	n := f.nodes[r]
	if n == nil {
		return container.PathStat{}, fmt.Errorf("%w: %s", errdefs.ErrNotFound, p)
	}
	st := container.PathStat{Name: path.Base(r), Mode: 0o644}
	switch n.typ {
	case tar.TypeDir:
		st.Mode = os.ModeDir | 0o755
	case tar.TypeSymlink:
		st.Mode, st.LinkTarget = os.ModeSymlink|0o777, n.link
	}
	return st, nil
}

func (f *ctrFS) CopyFromContainer(ctx context.Context, id, p string) (io.ReadCloser, container.PathStat, error) {
	st, err := f.ContainerStatPath(ctx, id, p)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets = append(f.gets, p)
	if raw, ok := f.raw[p]; ok {
		f.read += int64(len(raw))
		return io.NopCloser(strings.NewReader(string(raw))), st, nil
	}
	if err != nil {
		return nil, st, err
	}
	r, _ := f.resolve(p)
	var names []string
	for q := range f.nodes {
		if q == r || f.nodes[r].typ == tar.TypeDir && strings.HasPrefix(q, r+"/") {
			names = append(names, q)
		}
	}
	sort.Strings(names)
	pr, pw := io.Pipe()
	go func() { // owner: the reader, whose Close ends it
		tw := tar.NewWriter(pw)
		firstOf := map[int]string{}
		for _, q := range names {
			n := f.nodes[q]
			name := path.Join(path.Base(r), strings.TrimPrefix(q, r))
			h := &tar.Header{Name: name, Typeflag: n.typ, Mode: 0o644, ModTime: time.Unix(1700000000, 0), Linkname: n.link}
			var body io.Reader
			switch n.typ {
			case tar.TypeDir:
				h.Name, h.Mode = name+"/", 0o755
			case tar.TypeReg:
				h.Size, body = int64(len(n.body)), strings.NewReader(string(n.body))
				if n.body == nil {
					h.Size, body = n.size, io.LimitReader(zeros{}, n.size)
				}
				if n.inode != 0 {
					if first, ok := firstOf[n.inode]; ok {
						h.Typeflag, h.Linkname, h.Size, body = tar.TypeLink, first, 0, nil
					} else {
						firstOf[n.inode] = name
					}
				}
			}
			if err := tw.WriteHeader(h); err != nil {
				pw.CloseWithError(err)
				return
			}
			if body != nil {
				if _, err := io.Copy(tw, body); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	return &countedBody{r: pr, fs: f}, st, nil
}

type countedBody struct {
	r  *io.PipeReader
	fs *ctrFS
}

func (c *countedBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.fs.mu.Lock()
	c.fs.read += int64(n)
	c.fs.mu.Unlock()
	return n, err
}

func (c *countedBody) Close() error { return c.r.Close() }

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
