package agents

import (
	"testing"
)

// A Launch's secrets are listed by name; none is no list at all.
func TestLaunchSecrets(t *testing.T) {
	if got := launchSecrets(nil); got != nil {
		t.Errorf("no secrets: %v", got)
	}
	got := launchSecrets(map[string][]byte{"B": []byte("b"), "A": []byte("a")})
	if len(got) != 2 || got[0].Name != "A" || string(got[0].Value) != "a" || got[1].Name != "B" {
		t.Errorf("secrets %+v", got)
	}
}
