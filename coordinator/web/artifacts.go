package web

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/artifacts"
	"github.com/forge-ci/forge/coordinator/auth"
)

// Artifacts is where builds' artifacts are read (artifacts.Store).
type Artifacts interface {
	List(buildID string) ([]artifacts.Entry, error)
	Open(buildID, name string) (*os.File, artifacts.Entry, error)
	WriteTarGz(buildID string, w io.Writer) error
}

// noArtifacts is Config.Artifacts when none is given: every build has
// none.
type noArtifacts struct{}

func (noArtifacts) List(string) ([]artifacts.Entry, error) { return []artifacts.Entry{}, nil }
func (noArtifacts) Open(_, name string) (*os.File, artifacts.Entry, error) {
	return nil, artifacts.Entry{}, fmt.Errorf("%w: %q", artifacts.ErrNotFound, name)
}
func (noArtifacts) WriteTarGz(_ string, w io.Writer) error {
	return artifacts.WriteEmptyTarGz(w)
}

// ArtifactView is an artifact as the API lists it.
type ArtifactView struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// Link is a symbolic link's target, relative to its folder; GET of
	// the link gives the target's bytes.
	Link string `json:"link,omitempty"`
	// OriginalSize is set when the file was cut at --max-artifacts-size:
	// its size in the build.
	OriginalSize int64 `json:"original_size,omitempty"`
}

func artifactViews(list []artifacts.Entry) []ArtifactView {
	out := make([]ArtifactView, 0, len(list))
	for _, e := range list {
		out = append(out, ArtifactView{Path: e.Path, Size: e.Size, Link: e.Link, OriginalSize: e.OriginalSize})
	}
	return out
}

// listArtifacts answers the build's artifacts, by path: the same access
// as its log.
func (a *API) listArtifacts(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Read, true)
	if b == nil {
		return
	}
	list, err := a.cfg.Artifacts.List(b.ID)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, artifactViews(list))
}

// getArtifact sends one artifact's bytes, as a download: build output is
// data, never a page of this site.
func (a *API) getArtifact(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Read, true)
	if b == nil {
		return
	}
	name := r.PathValue("path")
	f, e, err := a.cfg.Artifacts.Open(b.ID, name)
	if errors.Is(err, artifacts.ErrNotFound) {
		httpError(w, http.StatusNotFound, "build %s has no artifact %q", b.ID, name)
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	download(w, path.Base(name))
	if e.OriginalSize > 0 {
		w.Header().Set("X-Forge-Original-Size", fmt.Sprint(e.OriginalSize))
	}
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// getArtifactsTarGz sends all of the build's artifacts as one gzipped tar.
func (a *API) getArtifactsTarGz(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	b := a.build(w, r, p, coordinator.Read, true)
	if b == nil {
		return
	}
	download(w, b.ID+"-artifacts.tar.gz")
	w.Header().Set("Content-Type", "application/gzip")
	if err := a.cfg.Artifacts.WriteTarGz(b.ID, w); err != nil {
		// The status is sent: all that is left is to cut the answer short.
		a.log.Warn("artifacts archive", "build", b.ID, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// download makes the answer a file to save, never a page to render.
func download(w http.ResponseWriter, name string) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	h.Set("Cache-Control", "private, no-store")
}

// artifactURL is the download link of a build's artifact: each element
// of its path escaped.
func artifactURL(buildID, name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return "/api/builds/" + url.PathEscape(buildID) + "/artifacts/" + strings.Join(parts, "/")
}
