package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// File is one entry of an image's root file system.
type File struct {
	Name string // path inside the image, without a leading slash
	Mode int64  // permission bits; 0 means 0644
	Body []byte
	Link string // when set, the entry is a symbolic link to Link
}

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

// BusyboxImage is a shell image: FROM scratch, busybox and its applets.
const BusyboxImage = "forge-test/busybox:latest"

// ScratchImage is an image with no shell and no files at all, the hardest
// case for a build: only the injected executor can run in it.
const ScratchImage = "forge-test/scratch:latest"

var busyboxApplets = []string{"sh", "ls", "cat", "sleep", "echo", "env", "true", "false", "printf", "test", "[", "mkdir", "rm", "touch", "pwd", "id", "kill", "ps", "wc", "grep", "head", "tail", "trap", "seq", "yes"}

var images sync.Map // tag -> *imageOnce

type imageOnce struct {
	once sync.Once
	err  error
}

// BusyboxUsersImage is BusyboxImage with account files: user builder
// (1234, group builder 1234) and group staff (50), for images whose USER
// is a name.
const BusyboxUsersImage = "forge-test/busybox-users:latest"

// EnsureBusybox builds BusyboxImage from the host's static busybox, once
// per test process.
func EnsureBusybox(t testing.TB, cli client.APIClient) string {
	t.Helper()
	EnsureImage(t, cli, BusyboxImage, busyboxFiles(t))
	return BusyboxImage
}

// BusyboxLinkedUsersImage is BusyboxUsersImage with its account files
// behind symbolic links (/etc/passwd -> ../usr/lib/passwd, /etc/group ->
// /usr/lib/group), as some images have them.
const BusyboxLinkedUsersImage = "forge-test/busybox-linked-users:latest"

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1234:1234:builder:/tmp:/bin/sh\n"
	testGroup  = "root:x:0:\nstaff:x:50:builder\nbuilder:x:1234:\n"
)

// EnsureBusyboxUsers builds BusyboxUsersImage, once per test process.
func EnsureBusyboxUsers(t testing.TB, cli client.APIClient) string {
	t.Helper()
	EnsureImage(t, cli, BusyboxUsersImage, append(busyboxFiles(t),
		File{Name: "etc/passwd", Body: []byte(testPasswd)}, File{Name: "etc/group", Body: []byte(testGroup)}))
	return BusyboxUsersImage
}

// EnsureBusyboxLinkedUsers builds BusyboxLinkedUsersImage, once per test
// process.
func EnsureBusyboxLinkedUsers(t testing.TB, cli client.APIClient) string {
	t.Helper()
	EnsureImage(t, cli, BusyboxLinkedUsersImage, append(busyboxFiles(t),
		File{Name: "usr/lib/passwd", Body: []byte(testPasswd)}, File{Name: "usr/lib/group", Body: []byte(testGroup)},
		File{Name: "etc/passwd", Link: "../usr/lib/passwd"}, File{Name: "etc/group", Link: "/usr/lib/group"}))
	return BusyboxLinkedUsersImage
}

func busyboxFiles(t testing.TB) []File {
	t.Helper()
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		Unavailable(t, "busybox image needs %s (Debian package busybox-static): %v", BusyboxPath, err)
	}
	files := []File{{Name: "bin/busybox", Mode: 0o755, Body: bb}, {Name: "tmp/.keep"}}
	for _, a := range busyboxApplets {
		files = append(files, File{Name: "bin/" + a, Link: "busybox"})
	}
	return files
}

// EnsureScratch builds ScratchImage: one data file and no executable at all.
func EnsureScratch(t testing.TB, cli client.APIClient) string {
	t.Helper()
	EnsureImage(t, cli, ScratchImage, []File{{Name: "etc/forge-test", Body: []byte("no shell here\n")}})
	return ScratchImage
}

// EnsureImage builds tag FROM scratch with files, once per test process
// (the engine's build cache makes repeated builds cheap across processes).
func EnsureImage(t testing.TB, cli client.APIClient, tag string, files []File) {
	t.Helper()
	v, _ := images.LoadOrStore(tag, &imageOnce{})
	o := v.(*imageOnce)
	o.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		o.err = BuildImage(ctx, cli, tag, files)
	})
	if o.err != nil {
		t.Fatalf("build image %s: %v", tag, o.err)
	}
}

// BuildImage builds tag FROM scratch with files through the engine's API,
// without a registry.
func BuildImage(ctx context.Context, cli client.APIClient, tag string, files []File) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dockerfile := []byte("FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile))}); err != nil {
		return err
	}
	tw.Write(dockerfile)
	for _, f := range files {
		h := &tar.Header{Name: "rootfs/" + f.Name, Mode: f.Mode, Size: int64(len(f.Body)), Typeflag: tar.TypeReg}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if f.Link != "" {
			h.Typeflag, h.Linkname, h.Size, h.Mode = tar.TypeSymlink, f.Link, 0, 0o777
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(f.Body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{
		Tags:        []string{tag},
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1,
		Labels:      map[string]string{"forge.test-image": "true"},
	})
	if err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	defer resp.Body.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(resp.Body, io.Discard, 0, false, nil); err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	return nil
}

var forgexec struct {
	once sync.Once
	dir  string
	bin  []byte
	err  error
}

// Forgexec builds cmd/forgexec as the static binary that ships (CGO off,
// stripped), once per test process, and returns its bytes.
func Forgexec(t testing.TB) []byte {
	t.Helper()
	forgexec.once.Do(func() {
		forgexec.dir, forgexec.err = os.MkdirTemp("", "forgexec-")
		if forgexec.err != nil {
			return
		}
		out := filepath.Join(forgexec.dir, "forgexec")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "github.com/forge-ci/forge/cmd/forgexec")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			forgexec.err = fmt.Errorf("go build forgexec: %v\n%s", err, b)
			return
		}
		forgexec.bin, forgexec.err = os.ReadFile(out)
		os.RemoveAll(forgexec.dir)
	})
	if forgexec.err != nil {
		t.Fatal(forgexec.err)
	}
	return forgexec.bin
}
