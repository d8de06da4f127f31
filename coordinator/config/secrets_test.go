package config

import (
	"slices"
	"strings"
	"testing"
)

// SecretsFor gives the list form to every action, and the mapping form
// to the actions it names only.
func TestSecretsFor(t *testing.T) {
	all, err := Parse("", []byte("image: b\nexecute: [x]\ndeploy: [y]\nsecrets: [A, B]\n"))
	if err != nil {
		t.Fatal(err)
	}
	per, err := Parse("", []byte("image: b\nexecute: [x]\ndeploy: [y]\nsecrets:\n  deploy: [D]\n  execute: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	none, err := Parse("", []byte("image: b\nexecute: [x]\nsecrets:\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg    *Config
		action string
		want   []string
	}{
		{all, "execute", []string{"A", "B"}}, {all, "deploy", []string{"A", "B"}},
		{per, "deploy", []string{"D"}}, {per, "execute", nil}, {per, "other", nil},
		{none, "execute", nil},
	} {
		if got := tc.cfg.SecretsFor(tc.action); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.action, got, tc.want)
		}
	}
}

func TestSecretNameTooLong(t *testing.T) {
	long := "A" + strings.Repeat("B", maxSecretName)
	_, err := Parse("", []byte("image: b\nexecute: [x]\nsecrets: ["+long+"]\n"))
	if err == nil || !strings.Contains(err.Error(), "longer than 128") || !strings.Contains(err.Error(), ".forge.yml:3:") {
		t.Errorf("a %d-character name: %v", len(long), err)
	}
}
