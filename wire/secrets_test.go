package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestValidSecretName(t *testing.T) {
	for _, ok := range []string{"A", "_", "DEPLOY_TOKEN", "_X1", "A" + strings.Repeat("9", MaxSecretName-1)} {
		if err := ValidSecretName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "deploy_token", "Deploy", "1ABC", "A-B", "A B", "Ä", "A\x00", strings.Repeat("A", MaxSecretName+1)} {
		if err := ValidSecretName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func secretLaunch(ss ...Secret) *Launch {
	return &Launch{BuildID: "b", ContainerID: "c", Executor: BlobRef{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1},
		Spec: json.RawMessage(`{}`), Secrets: ss}
}

// A Launch's secrets break no rule on either side: bad ones are refused
// when sending and when receiving, with the problem named.
func TestLaunchSecretsRules(t *testing.T) {
	big := bytes.Repeat([]byte{'x'}, MaxSecretSize)
	many := make([]Secret, MaxSecrets+1)
	for i := range many {
		many[i] = Secret{Name: fmt.Sprintf("S%d", i), Value: SecretValue("v")}
	}
	total := make([]Secret, MaxSecretsTotal/MaxSecretSize+1)
	for i := range total {
		total[i] = Secret{Name: fmt.Sprintf("S%d", i), Value: big}
	}
	for _, tt := range []struct {
		ss   []Secret
		want string
	}{
		{[]Secret{{Name: "lower", Value: SecretValue("v")}}, `"lower"`},
		{[]Secret{{Name: "A", Value: SecretValue("v")}, {Name: "A", Value: SecretValue("w")}}, "A given twice"},
		{[]Secret{{Name: "A"}}, "secret A: empty value"},
		{[]Secret{{Name: "A", Value: SecretValue("a\x00b")}}, "NUL"},
		{[]Secret{{Name: "A", Value: append(big, 'y')}}, "max 65536"},
		{many, "101 secrets"},
		{total, "bytes, max 524288"},
	} {
		m := secretLaunch(tt.ss...)
		if _, err := EncodeMessage(m); !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("encode %d secrets: %v, want %q", len(tt.ss), err, tt.want)
		}
		// As a peer that skips the check would send it.
		raw, err := json.Marshal(struct {
			Type string `json:"type"`
			*Launch
		}{TypeLaunch, m})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeMessage(raw); !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("decode %d secrets: %v, want %q", len(tt.ss), err, tt.want)
		}
	}
}

// The largest Launch the rules allow (the largest spec, the most secret
// bytes, the longest names) still fits one frame.
func TestLargestLaunchFitsAFrame(t *testing.T) {
	spec := json.RawMessage(`"` + strings.Repeat("a", MaxSpecSize-2) + `"`)
	var ss []Secret
	left := MaxSecretsTotal
	for i := 0; i < MaxSecrets; i++ {
		name := fmt.Sprintf("S%0*d", MaxSecretName-1, i)
		// Room for the secrets still to come, a 1-byte value each.
		n := min(MaxSecretSize, left-len(name)-(MaxSecrets-1-i)*(MaxSecretName+1))
		left -= len(name) + n
		ss = append(ss, Secret{Name: name, Value: bytes.Repeat([]byte{0xff}, n)})
	}
	if left != 0 {
		t.Fatalf("%d bytes of the budget left", left)
	}
	m := secretLaunch(ss...)
	m.Spec, m.Workdir = spec, "/"+strings.Repeat("w", 4000)
	b, err := EncodeMessage(m)
	if err != nil {
		t.Fatalf("largest launch: %v", err)
	}
	if len(b) > MaxFrameSize {
		t.Fatalf("largest launch is %d bytes, over the frame's %d", len(b), MaxFrameSize)
	}
	got, err := DecodeMessage(b)
	if err != nil || len(got.(*Launch).Secrets) != MaxSecrets {
		t.Fatalf("decode: %v", err)
	}
}

// A formatted Launch never shows a secret's value.
func TestSecretValueNeverPrints(t *testing.T) {
	m := secretLaunch(Secret{Name: "TOKEN", Value: SecretValue("hunter2-value")})
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		if out := fmt.Sprintf(verb, m); strings.Contains(out, "hunter2") || strings.Contains(out, fmt.Sprintf("%x", "hunter2")) {
			t.Errorf("%s shows the value: %s", verb, out)
		}
	}
	if out := fmt.Sprint(m.Secrets[0].Value); out != "***" {
		t.Errorf("value prints %q", out)
	}
}
