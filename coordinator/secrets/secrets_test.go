package secrets

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

var testKey = bytes.Repeat([]byte{0x42}, KeySize)

func TestParseKey(t *testing.T) {
	k, err := ParseKey([]byte(" " + hex.EncodeToString(testKey) + "\n"))
	if err != nil || !bytes.Equal(k, testKey) {
		t.Fatalf("good key: %x %v", k, err)
	}
	for name, bad := range map[string]string{
		"empty": "", "short": strings.Repeat("ab", 31), "long": strings.Repeat("ab", 33),
		"not hex": strings.Repeat("zz", 32), "raw bytes": string(testKey),
		"base64": base64.StdEncoding.EncodeToString(testKey),
	} {
		if _, err := ParseKey([]byte(bad)); err == nil || !strings.Contains(err.Error(), "64 hex characters") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := New(testKey[:16], nil); err == nil {
		t.Error("a 16-byte key was taken")
	}
}

func newKeeper(t *testing.T, key []byte) (*Keeper, *store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "forge.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	k, err := New(key, st)
	if err != nil {
		t.Fatal(err)
	}
	return k, st, path
}

// A sealed value opens only with its key, for its repository and name,
// and untouched; two seals of one value differ.
func TestSealOpen(t *testing.T) {
	k, _, _ := newKeeper(t, testKey)
	value := []byte("s3cret value\n\xff")
	sealed := k.seal("acme", "app", "TOKEN", value)
	if bytes.Contains(sealed, value) {
		t.Fatal("the sealed value holds the value")
	}
	if got, err := k.open("acme", "app", "TOKEN", sealed); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("open: %q %v", got, err)
	}
	if again := k.seal("acme", "app", "TOKEN", value); bytes.Equal(again, sealed) {
		t.Error("two seals are the same: the nonce repeats")
	}
	other, _, _ := newKeeper(t, bytes.Repeat([]byte{7}, KeySize))
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"other name":       func() ([]byte, error) { return k.open("acme", "app", "OTHER", sealed) },
		"other repository": func() ([]byte, error) { return k.open("acme", "app2", "TOKEN", sealed) },
		"other owner":      func() ([]byte, error) { return k.open("evil", "app", "TOKEN", sealed) },
		"other key":        func() ([]byte, error) { return other.open("acme", "app", "TOKEN", sealed) },
		"changed":          func() ([]byte, error) { return k.open("acme", "app", "TOKEN", flipped) },
		"cut":              func() ([]byte, error) { return k.open("acme", "app", "TOKEN", sealed[:5]) },
		"empty":            func() ([]byte, error) { return k.open("acme", "app", "TOKEN", nil) },
	} {
		if got, err := try(); err == nil || got != nil {
			t.Errorf("%s: opened %q", name, got)
		}
	}
}

// The database file never holds a value in clear, and a sealed value
// moved to another row does not open there.
func TestKeeperStoresOnlySealed(t *testing.T) {
	k, st, path := newKeeper(t, testKey)
	ctx := context.Background()
	values := map[string][]byte{
		"DEPLOY_TOKEN": []byte("deploy-Tok3n-0123456789"),
		"NPM_TOKEN":    []byte("npm_aaaaBBBBccccDDDD"),
		"BIG":          bytes.Repeat([]byte("big-secret-"), wire.MaxSecretSize/11),
	}
	for name, v := range values {
		if err := k.Set(ctx, "Acme", "App", name, v, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	got, err := k.Values(ctx, "acme", "app", []string{"DEPLOY_TOKEN", "NPM_TOKEN", "BIG"})
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range values {
		if !bytes.Equal(got[name], v) {
			t.Errorf("%s opened as %.40q", name, got[name])
		}
	}
	list, err := k.List(ctx, "ACME", "app")
	if err != nil || len(list) != 3 || list[0].Name != "BIG" || list[0].UpdatedBy != "alice" || list[0].Updated.IsZero() {
		t.Errorf("list %+v %v", list, err)
	}
	// Every byte SQLite wrote: the database, its WAL and shared memory.
	files, _ := filepath.Glob(path + "*")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for name, v := range values {
			for _, form := range [][]byte{v[:16], []byte(base64.StdEncoding.EncodeToString(v)[:16]), []byte(hex.EncodeToString(v)[:16])} {
				if bytes.Contains(raw, form) {
					t.Errorf("%s holds %s's value (%q)", f, name, form)
				}
			}
		}
	}
	// Rows swapped by someone who can write the database: neither opens.
	sealed, err := st.SealedSecrets(ctx, "acme", "app", []string{"DEPLOY_TOKEN", "NPM_TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	for name, other := range map[string]string{"DEPLOY_TOKEN": "NPM_TOKEN", "NPM_TOKEN": "DEPLOY_TOKEN"} {
		if _, err := st.DB().Exec(`UPDATE secrets SET sealed = ? WHERE name = ?`, sealed[other], name); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"DEPLOY_TOKEN", "NPM_TOKEN"} {
		if v, err := k.Values(ctx, "acme", "app", []string{name}); err == nil || v != nil || !strings.Contains(err.Error(), "does not open") {
			t.Errorf("swapped %s: %q %v", name, v, err)
		}
	}
	if _, err := st.DB().Exec(`UPDATE secrets SET repo = 'other' WHERE name = 'BIG'`); err != nil {
		t.Fatal(err)
	}
	if v, err := k.Values(ctx, "acme", "other", []string{"BIG"}); err == nil || v != nil {
		t.Errorf("moved to another repository: opened")
	}
}

func TestValuesNamesWhatIsMissing(t *testing.T) {
	k, _, _ := newKeeper(t, testKey)
	ctx := context.Background()
	if err := k.Set(ctx, "acme", "app", "A", []byte("a"), "alice"); err != nil {
		t.Fatal(err)
	}
	_, err := k.Values(ctx, "acme", "app", []string{"A", "B", "C", "B"})
	var me *MissingError
	if !errors.Is(err, coordinator.ErrNoSecret) || !errors.As(err, &me) || strings.Join(me.Names, ",") != "B,C" ||
		!strings.Contains(err.Error(), "secrets B, C are not set for acme/app") {
		t.Errorf("missing: %v", err)
	}
	if _, err := k.Values(ctx, "acme", "app", []string{"Z"}); err == nil || !strings.Contains(err.Error(), "secret Z is not set") {
		t.Errorf("one missing: %v", err)
	}
	if v, err := k.Values(ctx, "acme", "app", nil); err != nil || len(v) != 0 {
		t.Errorf("none asked: %v %v", v, err)
	}
}

// Bad names and values are refused, naming the problem, and nothing is
// stored.
func TestSetRefuses(t *testing.T) {
	k, st, _ := newKeeper(t, testKey)
	ctx := context.Background()
	for _, tc := range []struct {
		owner, repo, name string
		value             []byte
		want              string
	}{
		{"acme", "app", "lower", []byte("v"), `"lower"`},
		{"acme", "app", "1X", []byte("v"), `"1X"`},
		{"acme", "app", "", []byte("v"), "empty secret name"},
		{"acme", "app", "BIG", make([]byte, wire.MaxSecretSize+1), "max 65536"},
		{"acme", "app", "EMPTY", nil, "empty value"},
		{"acme", "app", "NUL", []byte("a\x00b"), "NUL"},
		{"", "app", "A", []byte("v"), "OWNER/REPO"},
		{"acme", "a/b", "A", []byte("v"), "OWNER/REPO"},
	} {
		err := k.Set(ctx, tc.owner, tc.repo, tc.name, tc.value, "alice")
		if !errors.Is(err, coordinator.ErrBadSecret) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s/%s %s: %v, want %q", tc.owner, tc.repo, tc.name, err, tc.want)
		}
	}
	var n int
	if err := st.DB().QueryRow(`SELECT count(*) FROM secrets`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d secrets stored after refusals (%v)", n, err)
	}
	if err := k.Delete(ctx, "acme", "app", "NONE"); !errors.Is(err, coordinator.ErrNoSecret) {
		t.Errorf("delete a missing secret: %v", err)
	}
}

// A person's GitHub token seals with a random nonce, opens only as
// theirs, and anything else given to OpenToken is an error.
func TestSealToken(t *testing.T) {
	k, err := New(bytes.Repeat([]byte{3}, KeySize), nil)
	if err != nil {
		t.Fatal(err)
	}
	sealed := k.SealToken("Alice", "ghu_abc")
	if !strings.HasPrefix(sealed, coordinator.SealedTokenPrefix) || strings.Contains(sealed, "ghu_abc") || sealed == k.SealToken("Alice", "ghu_abc") {
		t.Fatalf("sealed %q", sealed)
	}
	if tok, err := k.OpenToken("alice", sealed); err != nil || tok != "ghu_abc" {
		t.Errorf("open as alice (GitHub logins ignore case): %q %v", tok, err)
	}
	for _, bad := range []string{"ghu_abc", coordinator.SealedTokenPrefix + "!!", coordinator.SealedTokenPrefix, sealed[:len(sealed)-2]} {
		if tok, err := k.OpenToken("alice", bad); err == nil {
			t.Errorf("OpenToken(%q) = %q, want an error", bad, tok)
		}
	}
	if _, err := k.OpenToken("bob", sealed); err == nil {
		t.Error("alice's token opened as bob's")
	}
}

// Rekey seals every secret and token of the previous key under the new
// one, leaves what the new key already opens, seals clear tokens, and
// forgets tokens that open with neither. A secret that opens with neither
// stops it, naming the secret, with nothing changed.
func TestRekey(t *testing.T) {
	ctx := t.Context()
	oldKey, newKey, otherKey := bytes.Repeat([]byte{1}, KeySize), bytes.Repeat([]byte{2}, KeySize), bytes.Repeat([]byte{3}, KeySize)
	old, st, _ := newKeeper(t, oldKey)
	next, err := New(newKey, st)
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(otherKey, st)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]*Keeper{"OLD_ONE": old, "OLD_TWO": old, "NEW_ONE": next} {
		if err := k.Set(ctx, "acme", "app", name, []byte("value of "+name), "alice"); err != nil {
			t.Fatal(err)
		}
	}
	users := map[string]string{
		"alice": old.SealToken("alice", "ghu_alice"), "bob": "ghu_bob", "carol": other.SealToken("carol", "ghu_carol"),
		"dave": next.SealToken("dave", "ghu_dave"), "erin": "",
	}
	for login, tok := range users {
		if err := st.PutUser(ctx, coordinator.User{Login: login, Token: tok}); err != nil {
			t.Fatal(err)
		}
	}

	// A secret of a third key: refused, naming it, and nothing changes.
	if err := other.Set(ctx, "acme", "lost", "STRAY", []byte("x"), "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := next.Rekey(ctx, oldKey); err == nil || !strings.Contains(err.Error(), "STRAY of acme/lost") {
		t.Fatalf("rekey with a secret of neither key: %v, want an error naming it", err)
	}
	if v, err := old.Values(ctx, "acme", "app", []string{"OLD_ONE"}); err != nil || string(v["OLD_ONE"]) != "value of OLD_ONE" {
		t.Errorf("after the refused rekey OLD_ONE no longer opens with the old key: %v", err)
	}
	if u, _ := st.User(ctx, "bob"); u.Token != "ghu_bob" {
		t.Errorf("after the refused rekey bob's token is %q", u.Token)
	}
	if err := other.Delete(ctx, "acme", "lost", "STRAY"); err != nil {
		t.Fatal(err)
	}

	res, err := next.Rekey(ctx, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	if res.Secrets != 2 || res.Tokens != 2 || len(res.Dropped) != 1 || res.Dropped[0] != "carol" {
		t.Errorf("rekey: %+v, want 2 secrets, 2 tokens (alice, bob), carol dropped", res)
	}
	v, err := next.Values(ctx, "acme", "app", []string{"OLD_ONE", "OLD_TWO", "NEW_ONE"})
	if err != nil || len(v) != 3 || string(v["OLD_TWO"]) != "value of OLD_TWO" || string(v["NEW_ONE"]) != "value of NEW_ONE" {
		t.Errorf("with the new key after the rekey: %q %v", v, err)
	}
	if _, err := old.Values(ctx, "acme", "app", []string{"OLD_ONE"}); err == nil {
		t.Error("the old key still opens a secret after the rekey")
	}
	for login, want := range map[string]string{"alice": "ghu_alice", "bob": "ghu_bob", "dave": "ghu_dave"} {
		u, err := st.User(ctx, login)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := next.OpenToken(login, u.Token); err != nil || got != want {
			t.Errorf("%s's token after the rekey: %q (%q, %v)", login, u.Token, got, err)
		}
	}
	if u, _ := st.User(ctx, "dave"); u.Token != users["dave"] {
		t.Error("dave's token, sealed with the new key already, was sealed again")
	}
	for _, login := range []string{"carol", "erin"} {
		if u, _ := st.User(ctx, login); u.Token != "" {
			t.Errorf("%s's token after the rekey: %q, want none", login, u.Token)
		}
	}
	// Again: nothing left to do.
	if res, err := next.Rekey(ctx, oldKey); err != nil || res.Secrets != 0 || res.Tokens != 0 || len(res.Dropped) != 0 {
		t.Errorf("a second rekey: %+v %v, want nothing changed", res, err)
	}
}
