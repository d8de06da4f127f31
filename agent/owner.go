package agent

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Owner is a numeric user and group.
type Owner struct{ UID, GID int }

// maxAccountFile bounds what is read of an image's /etc/passwd or
// /etc/group.
const maxAccountFile = 1 << 20

// ErrUnknownUser: a container's user or group is a name its image's
// /etc/passwd or /etc/group does not have (the engine would refuse to
// start it too).
var ErrUnknownUser = errors.New("not in the image's account files")

// ownerOf is the numeric owner of a container whose configured user is
// user ("name", "uid", "name:group", "uid:gid"), resolved as the engine
// resolves it at start: names through the image's /etc/passwd and
// /etc/group, which read returns (nil when missing); a user given without
// a group gets its passwd entry's group, else 0.
func ownerOf(user string, read func(path string) ([]byte, error)) (Owner, error) {
	u, g, hasGroup := strings.Cut(user, ":")
	if u == "" && !hasGroup {
		return Owner{}, nil
	}
	var o Owner
	uid, err := strconv.Atoi(u)
	numeric := err == nil && uid >= 0
	if numeric {
		o.UID = uid
	}
	if u != "" && (!numeric || !hasGroup) {
		passwd, err := read("/etc/passwd")
		if err != nil {
			return Owner{}, err
		}
		e, found := findAccount(passwd, u, numeric, 2)
		switch {
		case found:
			o.UID, o.GID = e[0], e[1]
		case !numeric:
			return Owner{}, fmt.Errorf("user %q: %w", u, ErrUnknownUser)
		}
	}
	if !hasGroup {
		return o, nil
	}
	if gid, err := strconv.Atoi(g); err == nil && gid >= 0 {
		o.GID = gid
		return o, nil
	}
	group, err := read("/etc/group")
	if err != nil {
		return Owner{}, err
	}
	e, found := findAccount(group, g, false, 1)
	if !found {
		return Owner{}, fmt.Errorf("group %q: %w", g, ErrUnknownUser)
	}
	o.GID = e[0]
	return o, nil
}

// findAccount finds the line of an /etc/passwd or /etc/group whose name
// (or, when byID, whose id) is key, and returns its n numeric fields from
// the third on: uid and gid for passwd (n 2), gid for group (n 1).
func findAccount(file []byte, key string, byID bool, n int) ([]int, bool) {
	sc := bufio.NewScanner(bytes.NewReader(file))
	sc.Buffer(make([]byte, 0, 4096), maxAccountFile)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if (byID && f[2] != key) || (!byID && f[0] != key) {
			continue
		}
		var ids []int
		for _, s := range f[2:min(len(f), 2+n)] {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return nil, false
			}
			ids = append(ids, n)
		}
		for len(ids) < n {
			ids = append(ids, 0)
		}
		return ids, true
	}
	return nil, false
}

// readAccountFile reads a regular file of at most maxAccountFile bytes
// out of container id, following up to maxAccountLinks symbolic links (as
// some images link /etc/passwd); nil, nil when there is none.
func readAccountFile(ctx context.Context, d injector, id, p string) ([]byte, error) {
	for range maxAccountLinks + 1 {
		rc, _, err := d.CopyFromContainer(ctx, id, p)
		if errdefs.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s of container %s: %w", p, id, err)
		}
		b, link, err := readOneFile(rc)
		rc.Close()
		switch {
		case err != nil:
			return nil, fmt.Errorf("read %s of container %s: %w", p, id, err)
		case link == "":
			return b, nil
		case path.IsAbs(link):
			p = path.Clean(link)
		default:
			p = path.Join(path.Dir(p), link)
		}
	}
	return nil, fmt.Errorf("read %s of container %s: more than %d symbolic links", p, id, maxAccountLinks)
}

// maxAccountLinks bounds the links followed to an account file.
const maxAccountLinks = 4

// readOneFile reads the first entry of a tar: a regular file's bytes, a
// symbolic link's target, or neither for anything else.
func readOneFile(r io.Reader) (body []byte, link string, err error) {
	tr := tar.NewReader(r)
	h, err := tr.Next()
	if err != nil {
		return nil, "", err
	}
	switch {
	case h.Typeflag == tar.TypeSymlink:
		return nil, h.Linkname, nil
	case h.Typeflag != tar.TypeReg:
		return nil, "", nil
	case h.Size > maxAccountFile:
		return nil, "", fmt.Errorf("%d bytes, more than %d", h.Size, maxAccountFile)
	}
	body, err = io.ReadAll(io.LimitReader(tr, maxAccountFile))
	return body, "", err
}
