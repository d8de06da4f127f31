// Package atomicfile writes files through a temporary file in the same
// folder and a rename, so that a crash never leaves half a key or half a
// setting behind.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write writes data to path with mode (the umask does not apply).
func Write(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
