package fakegithub

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"
	"unicode/utf8"
)

// The Checks API (docs.github.com/rest/checks/runs): an installation
// whose token carries checks: write creates check runs and updates them;
// a token without it gets GitHub's 403. What GitHub validates is
// validated, with its 422; a completed check run made queued or
// in_progress again is refused too, as no correct client does it (GitHub
// does not document what it makes of it).

// Limits of the Checks API.
const (
	MaxCheckText   = 65535 // characters of output.summary and output.text
	MaxAnnotations = 50    // annotations per request
)

// CheckRun is a check run the fake accepted, as it stands, with every
// request that made or changed it.
type CheckRun struct {
	ID          int64          `json:"id"`
	Inst        int64          `json:"installation"` // the installation of the token that made it
	Owner       string         `json:"owner"`
	Repo        string         `json:"repo"`
	Name        string         `json:"name"`
	HeadSHA     string         `json:"head_sha"`
	ExternalID  string         `json:"external_id"`
	DetailsURL  string         `json:"details_url"`
	Status      string         `json:"status"`
	Conclusion  string         `json:"conclusion"`
	StartedAt   time.Time      `json:"started_at"`
	CompletedAt time.Time      `json:"completed_at"`
	Output      CheckRunOutput `json:"output"`
	// Requests are the POST and the PATCHes, in order.
	Requests []CheckRunRequest `json:"requests"`
}

// CheckRunOutput is a check run's output; annotations accumulate over
// requests, as on GitHub.
type CheckRunOutput struct {
	Title       string       `json:"title"`
	Summary     string       `json:"summary"`
	Text        string       `json:"text"`
	Annotations []Annotation `json:"annotations"`
}

// Annotation is one annotation of a check run.
type Annotation struct {
	Path      string `json:"path"`
	StartLine int    `json:"start_line"`
	EndLine   int    `json:"end_line"`
	Level     string `json:"annotation_level"`
	Message   string `json:"message"`
	Title     string `json:"title,omitempty"`
}

// CheckRunRequest is one request that made or changed a check run: its
// method, and the status, conclusion and title it asked for ("" for
// those it left as they were).
type CheckRunRequest struct {
	Method     string `json:"method"`
	Status     string `json:"status,omitempty"`
	Conclusion string `json:"conclusion,omitempty"`
	Title      string `json:"title,omitempty"`
}

// checkRunBody is what POST and PATCH take; pointers tell absent apart.
type checkRunBody struct {
	Name        *string         `json:"name"`
	HeadSHA     *string         `json:"head_sha"`
	DetailsURL  *string         `json:"details_url"`
	ExternalID  *string         `json:"external_id"`
	Status      *string         `json:"status"`
	Conclusion  *string         `json:"conclusion"`
	StartedAt   *time.Time      `json:"started_at"`
	CompletedAt *time.Time      `json:"completed_at"`
	Output      *checkRunOutput `json:"output"`
}

type checkRunOutput struct {
	Title       *string `json:"title"`
	Summary     *string `json:"summary"`
	Text        *string `json:"text"`
	Annotations []struct {
		Path      *string `json:"path"`
		StartLine *int    `json:"start_line"`
		EndLine   *int    `json:"end_line"`
		Level     *string `json:"annotation_level"`
		Message   *string `json:"message"`
		Title     *string `json:"title"`
	} `json:"annotations"`
}

var (
	checkStatuses    = map[string]bool{"queued": true, "in_progress": true, "completed": true}
	checkConclusions = map[string]bool{"action_required": true, "cancelled": true, "failure": true, "neutral": true,
		"success": true, "skipped": true, "timed_out": true}
	annotationLevels = map[string]bool{"notice": true, "warning": true, "failure": true}
	commitRE         = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)
)

// defaultPermissions are an installation's unless SetPermissions says
// otherwise: a commit-status app's, without checks.
var defaultPermissions = map[string]string{"contents": "read", "metadata": "read", "statuses": "write"}

// SetPermissions sets what the tokens made from now on for installation
// inst may do, as GitHub lists it in the access token's "permissions"
// ({"checks": "write", ...}); tokens made before keep theirs.
func (f *Server) SetPermissions(inst int64, perms map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instPerms[inst] = maps.Clone(perms)
}

// GrantChecks adds checks: write to installation inst's permissions.
func (f *Server) GrantChecks(inst int64) {
	f.mu.Lock()
	p := maps.Clone(f.permissionsOf(inst))
	f.mu.Unlock()
	p["checks"] = "write"
	f.SetPermissions(inst, p)
}

// permissionsOf is installation inst's permissions; f.mu is held.
func (f *Server) permissionsOf(inst int64) map[string]string {
	if p, ok := f.instPerms[inst]; ok {
		return p
	}
	return defaultPermissions
}

// FailCheckRuns makes the next n check-run requests (create or update)
// fail, how: as FailStatuses.
func (f *Server) FailCheckRuns(n int, how string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkFail = failures{n: n, how: how}
}

// clone is a copy of c that shares no slice with it.
func (c *CheckRun) clone() CheckRun {
	out := *c
	out.Output.Annotations = append([]Annotation(nil), c.Output.Annotations...)
	out.Requests = append([]CheckRunRequest(nil), c.Requests...)
	return out
}

// CheckRuns are the check runs accepted so far, in the order they were
// created.
func (f *Server) CheckRuns() []CheckRun {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]CheckRun, 0, len(f.checkRuns))
	for _, cr := range f.checkRuns {
		out = append(out, cr.clone())
	}
	return out
}

// tokenMay answers GitHub's 403 and returns false when the request's
// token lacks permission perm at level write.
func (f *Server) tokenMay(w http.ResponseWriter, r *http.Request, perm, docs string) bool {
	f.mu.Lock()
	p := f.tokenPerms[tokenOf(r)]
	f.mu.Unlock()
	if p[perm] == "write" {
		return true
	}
	writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration",
		"documentation_url": docs})
	return false
}

func (f *Server) createCheckRun(w http.ResponseWriter, r *http.Request) {
	inst, ok := f.checkToken(w, r)
	if !ok || !f.tokenMay(w, r, "checks", "https://docs.github.com/rest/checks/runs#create-a-check-run") || f.fail(w, &f.checkFail) {
		return
	}
	var in checkRunBody
	if !f.decodeCheckRun(w, r, &in) {
		return
	}
	cr := &CheckRun{Inst: inst, Owner: r.PathValue("o"), Repo: r.PathValue("r"), Status: "queued"}
	switch {
	case in.Name == nil || *in.Name == "":
		f.invalid(w, r, "name is required")
		return
	case in.HeadSHA == nil || !commitRE.MatchString(*in.HeadSHA):
		f.invalid(w, r, "head_sha is not a commit id")
		return
	}
	cr.Name, cr.HeadSHA, cr.StartedAt = *in.Name, *in.HeadSHA, f.now().UTC()
	if !f.applyCheckRun(w, r, cr, &in) {
		return
	}
	f.mu.Lock()
	f.nextCheckRun++
	cr.ID = f.nextCheckRun
	f.checkRuns = append(f.checkRuns, cr)
	out := f.checkRunJSON(r, cr)
	f.mu.Unlock()
	f.logf("fakegithub: check run %d %s %s/%s on %s/%s@%s: %s", cr.ID, cr.Name, cr.Status, cr.Conclusion, cr.Owner, cr.Repo, cr.HeadSHA, cr.Output.Title)
	writeJSON(w, http.StatusCreated, out)
}

func (f *Server) updateCheckRun(w http.ResponseWriter, r *http.Request) {
	if _, ok := f.checkToken(w, r); !ok || !f.tokenMay(w, r, "checks", "https://docs.github.com/rest/checks/runs#update-a-check-run") || f.fail(w, &f.checkFail) {
		return
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	f.mu.Lock()
	var cr *CheckRun
	for _, c := range f.checkRuns {
		if c.ID == id && err == nil && c.Owner == r.PathValue("o") && c.Repo == r.PathValue("r") {
			cr = c
		}
	}
	var cur CheckRun
	if cr != nil {
		cur = cr.clone()
	}
	f.mu.Unlock()
	if cr == nil {
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": no such check run")
		notFound(w)
		return
	}
	var in checkRunBody
	if !f.decodeCheckRun(w, r, &in) {
		return
	}
	if in.HeadSHA != nil {
		f.invalid(w, r, "head_sha cannot be changed")
		return
	}
	if in.Name != nil && *in.Name == "" {
		f.invalid(w, r, "name cannot be empty")
		return
	}
	if in.Name != nil {
		cur.Name = *in.Name
	}
	if cur.Status == "completed" && in.Status != nil && *in.Status != "completed" {
		f.invalid(w, r, "check run "+r.PathValue("id")+" is completed: the fake refuses to make it "+*in.Status+" again (make a new one)")
		return
	}
	if !f.applyCheckRun(w, r, &cur, &in) {
		return
	}
	f.mu.Lock()
	*cr = cur
	out := f.checkRunJSON(r, cr)
	f.mu.Unlock()
	f.logf("fakegithub: check run %d %s %s/%s: %s", cr.ID, cr.Name, cur.Status, cur.Conclusion, cur.Output.Title)
	writeJSON(w, http.StatusOK, out)
}

func (f *Server) decodeCheckRun(w http.ResponseWriter, r *http.Request, in *checkRunBody) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(in); err != nil {
		f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": " + err.Error())
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Problems parsing JSON"})
		return false
	}
	return true
}

// invalid answers GitHub's 422 for a body it will not take, which only a
// client bug sends.
func (f *Server) invalid(w http.ResponseWriter, r *http.Request, why string) {
	f.refuse("refused " + r.Method + " " + r.URL.RequestURI() + ": " + why)
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"message": "Validation Failed: " + why,
		"documentation_url": "https://docs.github.com/rest/checks/runs"})
}

// applyCheckRun checks in and applies it to cr, or answers 422.
func (f *Server) applyCheckRun(w http.ResponseWriter, r *http.Request, cr *CheckRun, in *checkRunBody) bool {
	req := CheckRunRequest{Method: r.Method}
	if in.DetailsURL != nil {
		if u, err := url.Parse(*in.DetailsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			f.invalid(w, r, fmt.Sprintf("details_url %q is not an http(s) URL", *in.DetailsURL))
			return false
		}
		cr.DetailsURL = *in.DetailsURL
	}
	if in.ExternalID != nil {
		cr.ExternalID = *in.ExternalID
	}
	if in.StartedAt != nil {
		cr.StartedAt = *in.StartedAt
	}
	status := cr.Status
	if in.Status != nil {
		if !checkStatuses[*in.Status] {
			f.invalid(w, r, fmt.Sprintf("status %q: want queued, in_progress or completed", *in.Status))
			return false
		}
		status, req.Status = *in.Status, *in.Status
	}
	if in.Conclusion != nil {
		switch c := *in.Conclusion; {
		case c == "stale":
			f.invalid(w, r, "conclusion stale: only GitHub can set it")
			return false
		case !checkConclusions[c]:
			f.invalid(w, r, fmt.Sprintf("conclusion %q is not one of GitHub's", c))
			return false
		}
		// A conclusion completes the check run (GitHub's docs).
		status, cr.Conclusion, req.Conclusion = "completed", *in.Conclusion, *in.Conclusion
	}
	if status == "completed" && cr.Conclusion == "" {
		f.invalid(w, r, "conclusion is required with status completed")
		return false
	}
	cr.Status = status
	if status == "completed" {
		cr.CompletedAt = f.now().UTC()
		if in.CompletedAt != nil {
			cr.CompletedAt = *in.CompletedAt
		}
	}
	if o := in.Output; o != nil {
		if o.Title == nil || *o.Title == "" || o.Summary == nil || *o.Summary == "" {
			f.invalid(w, r, "output needs a title and a summary")
			return false
		}
		for name, v := range map[string]*string{"summary": o.Summary, "text": o.Text} {
			if v != nil && utf8.RuneCountInString(*v) > MaxCheckText {
				f.invalid(w, r, fmt.Sprintf("output.%s is %d characters, over %d", name, utf8.RuneCountInString(*v), MaxCheckText))
				return false
			}
		}
		if len(o.Annotations) > MaxAnnotations {
			f.invalid(w, r, fmt.Sprintf("%d annotations, over %d per request", len(o.Annotations), MaxAnnotations))
			return false
		}
		var added []Annotation
		for i, a := range o.Annotations {
			if a.Path == nil || *a.Path == "" || a.StartLine == nil || a.EndLine == nil || a.Level == nil || a.Message == nil ||
				*a.StartLine < 1 || *a.EndLine < *a.StartLine || !annotationLevels[*a.Level] || *a.Message == "" {
				f.invalid(w, r, fmt.Sprintf("annotation %d needs a path, 1 <= start_line <= end_line, an annotation_level of notice, warning or failure, and a message", i))
				return false
			}
			an := Annotation{Path: *a.Path, StartLine: *a.StartLine, EndLine: *a.EndLine, Level: *a.Level, Message: *a.Message}
			if a.Title != nil {
				an.Title = *a.Title
			}
			added = append(added, an)
		}
		cr.Output.Title, cr.Output.Summary, req.Title = *o.Title, *o.Summary, *o.Title
		cr.Output.Text = ""
		if o.Text != nil {
			cr.Output.Text = *o.Text
		}
		cr.Output.Annotations = append(cr.Output.Annotations, added...)
	}
	cr.Requests = append(cr.Requests, req)
	return true
}

// checkRunJSON is cr in GitHub's shape; f.mu is held.
func (f *Server) checkRunJSON(r *http.Request, cr *CheckRun) map[string]any {
	api := "http://" + r.Host + "/api/v3/repos/" + cr.Owner + "/" + cr.Repo
	opt := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	ts := func(t time.Time) any {
		if t.IsZero() {
			return nil
		}
		return t.UTC().Format(time.RFC3339)
	}
	id := strconv.FormatInt(cr.ID, 10)
	return map[string]any{
		"id": cr.ID, "node_id": "CR_fake" + id, "head_sha": cr.HeadSHA, "external_id": cr.ExternalID,
		"url": api + "/check-runs/" + id, "html_url": "http://" + r.Host + "/" + cr.Owner + "/" + cr.Repo + "/runs/" + id,
		"details_url": opt(cr.DetailsURL), "status": cr.Status, "conclusion": opt(cr.Conclusion),
		"started_at": ts(cr.StartedAt), "completed_at": ts(cr.CompletedAt), "name": cr.Name,
		"output": map[string]any{"title": opt(cr.Output.Title), "summary": opt(cr.Output.Summary), "text": opt(cr.Output.Text),
			"annotations_count": len(cr.Output.Annotations), "annotations_url": api + "/check-runs/" + id + "/annotations"},
		"check_suite":   map[string]any{"id": 1000 + cr.Inst},
		"app":           map[string]any{"id": f.opts.AppID, "slug": "forge-test", "name": "Forge (test)"},
		"pull_requests": []any{},
	}
}
