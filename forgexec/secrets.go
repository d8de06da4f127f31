package forgexec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// SecretsPath is where the agent puts a build's secrets inside the
// container, beside the spec and in the same archive (PROTOCOL.md §6.2).
// Untrusted builds have none.
const SecretsPath = "/.forge/secrets.json"

// EncodeSecrets is the content of the secrets file: a JSON object of
// environment variable name to value, each value base64, so any bytes
// but NUL come through unchanged.
func EncodeSecrets(secrets map[string][]byte) ([]byte, error) {
	if err := checkSecrets(secrets); err != nil {
		return nil, err
	}
	return json.Marshal(secrets)
}

// TakeSecrets reads the secrets file at path and removes it, so that no
// command of the build (and nothing it archives) finds it on disk; the
// values reach the commands as environment variables only ([Runner]
// Secrets). No file is no secrets. A file that cannot be read, decoded or
// removed is an error: a build must not run with its secrets left behind.
func TakeSecrets(path string) (map[string]string, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secrets: %w", err)
	}
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("remove the secrets file before the commands run: %w", err)
	}
	out, err := DecodeSecrets(raw)
	if err != nil {
		return nil, fmt.Errorf("secrets %s: %w", path, err)
	}
	return out, nil
}

// DecodeSecrets reads a secrets file's content (EncodeSecrets): one JSON
// object of name to base64 value, nothing after it, no name or value an
// environment entry cannot hold.
func DecodeSecrets(raw []byte) (map[string]string, error) {
	var in map[string][]byte
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&in); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the JSON object")
	}
	if err := checkSecrets(in); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = string(v)
	}
	return out, nil
}

// checkSecrets refuses what cannot be an environment entry read back as
// NAME=value.
func checkSecrets(s map[string][]byte) error {
	for k, v := range s {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("invalid secret name %q", k)
		}
		if bytes.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("the value of %s holds a NUL byte", k)
		}
	}
	return nil
}
