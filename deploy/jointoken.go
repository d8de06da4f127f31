package deploy

import (
	"crypto/rand"
	"encoding/base64"
)

// The join token lets an agent without a certificate ask the coordinator
// for one (wire/PROTOCOL.md §6.6). `forge certs join-token --dir D` and
// make up keep it as D/JoinTokenFile.
const (
	JoinTokenFile = "join-token"
	// JoinTokenPrefix makes the token recognisable in logs and to secret
	// scanners.
	JoinTokenPrefix = "forge_join_"
)

// NewJoinToken is JoinTokenPrefix and 256 random bits, base64url.
func NewJoinToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return JoinTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}
