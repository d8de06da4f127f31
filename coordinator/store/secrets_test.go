package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

func TestSecrets(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	put := func(owner, repo, name, sealed, by string) {
		t.Helper()
		if err := s.PutSecret(ctx, coordinator.Secret{Owner: owner, Repo: repo, Name: name, Updated: at, UpdatedBy: by}, []byte(sealed)); err != nil {
			t.Fatal(err)
		}
	}
	put("acme", "app", "B", "sealed-b", "alice")
	put("acme", "app", "A", "sealed-a", "alice")
	put("acme", "other", "A", "sealed-other", "bob")
	at = at.Add(time.Hour)
	put("Acme", "App", "B", "sealed-b2", "bob") // GitHub's names ignore case

	list, err := s.Secrets(ctx, "ACME", "app")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "A" || list[1].Name != "B" || list[1].UpdatedBy != "bob" || !list[1].Updated.Equal(at) {
		t.Fatalf("list %+v", list)
	}
	sealed, err := s.SealedSecrets(ctx, "acme", "app", []string{"A", "B", "MISSING"})
	if err != nil || len(sealed) != 2 || string(sealed["A"]) != "sealed-a" || string(sealed["B"]) != "sealed-b2" {
		t.Fatalf("sealed %q %v", sealed, err)
	}
	if none, err := s.SealedSecrets(ctx, "acme", "app", nil); err != nil || len(none) != 0 {
		t.Errorf("no names: %v %v", none, err)
	}
	if err := s.DeleteSecret(ctx, "acme", "app", "A"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSecret(ctx, "acme", "app", "A"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete twice: %v", err)
	}
	if list, _ := s.Secrets(ctx, "acme", "other"); len(list) != 1 {
		t.Errorf("another repository's secrets changed: %+v", list)
	}
	if err := s.PutSecret(ctx, coordinator.Secret{Owner: "acme", Repo: "app", Name: "C"}, nil); err == nil {
		t.Error("stored a secret without a sealed value")
	}
}
