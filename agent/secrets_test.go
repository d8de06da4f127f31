package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/wire"
)

// The secrets file goes into the archive beside the spec, 0400, owned
// (with /.forge/) by the owner given; without secrets there is no file
// and /.forge/ is root's.
func TestWriteArchiveSecrets(t *testing.T) {
	exe := []byte("exe")
	for _, tc := range []struct {
		secrets []byte
		owner   Owner
	}{
		{nil, Owner{UID: 1000, GID: 1000}},
		{[]byte(`{"A":"YQ=="}`), Owner{}},
		{[]byte(`{"A":"YQ=="}`), Owner{UID: 1000, GID: 50}},
	} {
		var buf bytes.Buffer
		if err := WriteArchive(&buf, Payload{Executor: bytes.NewReader(exe), ExecutorSize: 3, Spec: []byte(`{}`),
			Workdir: "/forge/src", Secrets: tc.secrets, Owner: tc.owner}); err != nil {
			t.Fatal(err)
		}
		got := readTar(t, buf.Bytes())
		dir, file := got[".forge/"], got[".forge/secrets.json"]
		if tc.secrets == nil {
			if file != nil || dir.Uid != 0 || dir.Gid != 0 {
				t.Errorf("no secrets: file %+v, /.forge/ owned %d:%d", file, dir.Uid, dir.Gid)
			}
			continue
		}
		if file == nil || file.Mode != 0o400 || file.Uid != tc.owner.UID || file.Gid != tc.owner.GID ||
			dir.Uid != tc.owner.UID || dir.Gid != tc.owner.GID {
			t.Errorf("owner %+v: file %+v, dir %+v", tc.owner, file, dir)
		}
		tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
		for h, err := tr.Next(); err == nil; h, err = tr.Next() {
			if h.Name == ".forge/secrets.json" {
				if body, _ := io.ReadAll(tr); !bytes.Equal(body, tc.secrets) {
					t.Errorf("secrets file %q", body)
				}
			}
		}
	}
}

// The secrets file's owner is the container's user as the engine
// resolves it: numbers as they are, names through the image's
// /etc/passwd and /etc/group, a user's own group when none is given.
func TestOwnerOf(t *testing.T) {
	files := map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n# a comment\nbad line\nnode:x:1000:1001::/home/node:/bin/sh\nodd:x:12:nan:\n",
		"/etc/group":  "root:x:0:\nstaff:x:50:node\nnode:x:1001:\n",
	}
	read := func(path string) ([]byte, error) {
		if b, ok := files[path]; ok {
			return []byte(b), nil
		}
		return nil, nil
	}
	for user, want := range map[string]Owner{
		"": {}, "root": {}, "0": {}, "1000": {UID: 1000, GID: 1001}, "1000:1000": {UID: 1000, GID: 1000},
		"1000:staff": {UID: 1000, GID: 50}, "node": {UID: 1000, GID: 1001}, "node:node": {UID: 1000, GID: 1001},
		"node:0": {UID: 1000}, "2000": {UID: 2000}, ":50": {GID: 50},
	} {
		if got, err := ownerOf(user, read); err != nil || got != want {
			t.Errorf("ownerOf(%q) = %+v, %v; want %+v", user, got, err, want)
		}
	}
	for _, user := range []string{"nobody", "node:wheel", "odd", "-1"} {
		if got, err := ownerOf(user, read); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("ownerOf(%q) = %+v, %v; want ErrUnknownUser", user, got, err)
		}
	}
	// An image without account files: numbers still work, names cannot.
	none := func(string) ([]byte, error) { return nil, nil }
	if got, err := ownerOf("1000:50", none); err != nil || got != (Owner{UID: 1000, GID: 50}) {
		t.Errorf("no account files: 1000:50 = %+v, %v", got, err)
	}
	if _, err := ownerOf("node", none); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("no account files: node: %v", err)
	}
	// A failed read is the caller's error, not a guess.
	broken := errors.New("engine gone")
	if _, err := ownerOf("node", func(string) ([]byte, error) { return nil, broken }); !errors.Is(err, broken) {
		t.Errorf("failed read: %v", err)
	}
}

// A Launch's secrets reach the container in its one archive as the
// secrets file, and nowhere else.
func TestLaunchSecrets(t *testing.T) {
	node := fakedocker.NewNode("n1")
	_, cs, _ := start(t, node.Docker())
	cid := node.Create("b1")
	cs.waitLanded(t, cid)
	value := "tok\nen-\xff"
	if _, _, err := cs.launch(t, "b1", cid, nil, wire.Secret{Name: "DEPLOY_TOKEN", Value: wire.SecretValue(value)}); err != nil {
		t.Fatalf("launch: %v", err)
	}
	ctr, _ := node.Container(cid)
	if len(ctr.Archives) != 1 {
		t.Fatalf("%d archives", len(ctr.Archives))
	}
	got := readTar(t, ctr.Archives[0])
	if h := got[".forge/secrets.json"]; h == nil || h.Mode != 0o400 {
		t.Fatalf("secrets file %+v", h)
	}
	files, err := fakedocker.Files(ctr.Archives[0])
	if err != nil {
		t.Fatal(err)
	}
	var ss map[string][]byte
	if err := json.Unmarshal(files[".forge/secrets.json"], &ss); err != nil || string(ss["DEPLOY_TOKEN"]) != value || len(ss) != 1 {
		t.Errorf("secrets file %q: %v", files[".forge/secrets.json"], err)
	}
	for name, body := range files {
		if name != ".forge/secrets.json" && strings.Contains(string(body), "tok\nen") {
			t.Errorf("%s holds the value", name)
		}
	}
}

// readAccountFile follows links (relative and absolute) to the account
// file, a bounded number of them, and takes a missing file as none.
func TestReadAccountFileLinks(t *testing.T) {
	entry := func(h tar.Header, body string) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		h.Size = int64(len(body))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
		tw.Close()
		return b.Bytes()
	}
	files := map[string][]byte{
		"/etc/passwd":     entry(tar.Header{Name: "passwd", Typeflag: tar.TypeSymlink, Linkname: "../usr/lib/passwd"}, ""),
		"/usr/lib/passwd": entry(tar.Header{Name: "passwd", Typeflag: tar.TypeReg, Mode: 0o644}, "node:x:7:8::/:/bin/sh\n"),
		"/etc/group":      entry(tar.Header{Name: "group", Typeflag: tar.TypeSymlink, Linkname: "/etc/group"}, ""),
	}
	d := &fakedocker.Docker{CopyFromContainerFn: func(ctx context.Context, id, p string) (io.ReadCloser, container.PathStat, error) {
		b, ok := files[p]
		if !ok {
			return nil, container.PathStat{}, errdefs.ErrNotFound
		}
		return io.NopCloser(bytes.NewReader(b)), container.PathStat{}, nil
	}}
	if b, err := readAccountFile(t.Context(), d, "c", "/etc/passwd"); err != nil || string(b) != "node:x:7:8::/:/bin/sh\n" {
		t.Errorf("/etc/passwd through its link: %q %v", b, err)
	}
	if _, err := readAccountFile(t.Context(), d, "c", "/etc/group"); err == nil || !strings.Contains(err.Error(), "symbolic links") {
		t.Errorf("a link to itself: %v", err)
	}
	if b, err := readAccountFile(t.Context(), d, "c", "/etc/shadow"); err != nil || b != nil {
		t.Errorf("a missing file: %q %v", b, err)
	}
}
