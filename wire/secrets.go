package wire

import (
	"bytes"
	"errors"
	"fmt"
)

// ValidSecretName checks a secret's name: [A-Z_][A-Z0-9_]*, at most
// MaxSecretName characters, so that it is an environment variable's
// name everywhere (PROTOCOL.md §5.6).
func ValidSecretName(name string) error {
	switch {
	case name == "":
		return errors.New("empty secret name")
	case len(name) > MaxSecretName:
		return fmt.Errorf("secret name %.20q... is %d characters, max %d", name, len(name), MaxSecretName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '_' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return fmt.Errorf("secret name %q: use upper-case letters, digits and _, not starting with a digit ([A-Z_][A-Z0-9_]*)", name)
	}
	return nil
}

// ValidSecretValue checks a secret's value: 1 to MaxSecretSize bytes,
// without NUL (no environment variable can hold one).
func ValidSecretValue(v []byte) error {
	switch {
	case len(v) == 0:
		return errors.New("empty value")
	case len(v) > MaxSecretSize:
		return fmt.Errorf("value is %d bytes, max %d (64 KiB)", len(v), MaxSecretSize)
	case bytes.IndexByte(v, 0) >= 0:
		return errors.New("value holds a NUL byte, which no environment variable can")
	}
	return nil
}
