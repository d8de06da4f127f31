package plan

import (
	"strings"
	"testing"
	"time"
)

func checkName(t *testing.T, name string) {
	t.Helper()
	if !dnsLabelRE.MatchString(name) || strings.Contains(name, "--") || !strings.HasPrefix(name, "forge-") {
		t.Errorf("%q (%d characters) is not a valid service name", name, len(name))
	}
}

func TestServiceName(t *testing.T) {
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	longBranch := "feature/" + strings.Repeat("x", 100)
	for _, tc := range []struct {
		name string
		b    Build
		want string
	}{
		{"pull request", Build{Owner: "forge-ci", Repo: "forge", PullRequest: 7, Branch: "ignored", Created: at},
			"forge-forge-ci-forge-7-20240102t030405"},
		{"push uses the branch", Build{Owner: "forge-ci", Repo: "forge", Branch: "main", Created: at},
			"forge-forge-ci-forge-main-20240102t030405"},
		{"push without branch uses the ref", Build{Owner: "o", Repo: "r", Ref: "refs/heads/dev", Created: at},
			"forge-o-r-dev-20240102t030405"},
		{"lower case", Build{Owner: "Forge-CI", Repo: "ForGe", Branch: "MAIN", Created: at},
			"forge-forge-ci-forge-main-20240102t030405"},
		{"odd characters", Build{Owner: "my_org", Repo: "repo.name", Branch: "feature/a__b--c..d", Created: at},
			"forge-my-org-repo-name-feature-a-b-c-d-20240102t030405"},
		{"leading and trailing dashes", Build{Owner: "-o-", Repo: "_r_", Branch: "/x/", Created: at},
			"forge-o-r-x-20240102t030405"},
		{"unicode", Build{Owner: "Ünïcødé", Repo: "日本", Branch: "façade", Created: at},
			"forge-n-c-d-fa-ade-20240102t030405"},
		{"a part that vanishes", Build{Owner: "o", Repo: "日本", PullRequest: 3, Created: at},
			"forge-o-3-20240102t030405"},
		{"timestamp in UTC", Build{Owner: "o", Repo: "r", PullRequest: 1, Created: time.Date(2024, 1, 2, 5, 4, 5, 0, time.FixedZone("", 2*3600))},
			"forge-o-r-1-20240102t030405"},
		{"exactly 63 is not cut", Build{Owner: "o", Repo: "r", Branch: strings.Repeat("b", 63-len("forge-o-r--20240102t030405")), Created: at},
			"forge-o-r-" + strings.Repeat("b", 37) + "-20240102t030405"},
		{"64 is cut", Build{Owner: "o", Repo: "r", Branch: strings.Repeat("b", 38), Created: at},
			"forge-o-r-" + strings.Repeat("b", 28) + "-557b9c63-20240102t030405"},
		{"long branch gives way first", Build{Owner: "forge-ci", Repo: "forge", Branch: longBranch, Created: at},
			"forge-forge-ci-forge-feature-xxxxxxxxx-bc475831-20240102t030405"},
		{"pull request number survives the cut", Build{Owner: strings.Repeat("o", 40), Repo: strings.Repeat("r", 40), PullRequest: 123456, Created: at},
			"forge-oooooooooooo-rrrrrrrrrrrr-123456-53469778-20240102t030405"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ServiceName(tc.b, nil)
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
			checkName(t, got)
		})
	}
}

func TestServiceNameCutKeepsUniqueness(t *testing.T) {
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	prefix := "feature/" + strings.Repeat("same-prefix-", 8)
	a := ServiceName(Build{Owner: "o", Repo: "r", Branch: prefix + "one", Created: at}, nil)
	b := ServiceName(Build{Owner: "o", Repo: "r", Branch: prefix + "two", Created: at}, nil)
	checkName(t, a)
	checkName(t, b)
	if a == b {
		t.Errorf("two branches differing past the cut share the name %q", a)
	}
	if len(a) != MaxNameLen || !strings.HasSuffix(a, "-20240102t030405") {
		t.Errorf("cut name %q (%d) should use all 63 characters and end with the timestamp", a, len(a))
	}
	// Same build, same name: the name can be recomputed.
	if again := ServiceName(Build{Owner: "o", Repo: "r", Branch: prefix + "one", Created: at}, nil); again != a {
		t.Errorf("not deterministic: %q then %q", a, again)
	}
}

func TestServiceNameCollisions(t *testing.T) {
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	short := Build{Owner: "o", Repo: "r", PullRequest: 7, Created: at}
	long := Build{Owner: "o", Repo: "r", Branch: strings.Repeat("b", 45), Created: at}
	exact := Build{Owner: "o", Repo: "r", Branch: strings.Repeat("b", 37), Created: at} // 63 uncut

	takenSet := func(names ...string) func(string) bool {
		set := map[string]bool{}
		for _, n := range names {
			set[n] = true
		}
		return func(n string) bool { return set[n] }
	}

	base := ServiceName(short, nil)
	if got := ServiceName(short, takenSet(base)); got != base+"-2" {
		t.Errorf("one collision: %q", got)
	}
	if got := ServiceName(short, takenSet(base, base+"-2")); got != base+"-3" {
		t.Errorf("two collisions: %q", got)
	}
	if got := ServiceName(short, takenSet("something-else")); got != base {
		t.Errorf("no collision: %q", got)
	}

	for _, b := range []Build{long, exact} {
		first := ServiceName(b, nil)
		second := ServiceName(b, takenSet(first))
		checkName(t, second)
		if second == first || !strings.HasSuffix(second, "-20240102t030405-2") || len(second) > MaxNameLen {
			t.Errorf("collision of %q gave %q", first, second)
		}
	}

	// A taken that always says yes must not loop forever.
	calls := 0
	got := ServiceName(short, func(string) bool { calls++; return true })
	checkName(t, got)
	if calls > maxNameTries || !strings.HasSuffix(got, "-1000") {
		t.Errorf("always taken: %d calls, %q", calls, got)
	}
}

// FuzzServiceName checks that any build gives a valid DNS label.
func FuzzServiceName(f *testing.F) {
	f.Add("Forge-CI", "forge", 7, "main", int64(0))
	f.Add("ünï", "日本", 0, "feature/"+strings.Repeat("x", 200), int64(1e18))
	f.Add("", "", 0, "", int64(-1e18))
	f.Add("---", "___", 0, "///", int64(42))
	f.Fuzz(func(t *testing.T, owner, repo string, pr int, branch string, unix int64) {
		if pr < 0 {
			pr = -pr
		}
		b := Build{Owner: owner, Repo: repo, PullRequest: pr, Branch: branch, Created: time.Unix(unix, 0)}
		name := ServiceName(b, nil)
		// Years past 9999 or before 0 make the timestamp longer or
		// signed; the name must still be a label.
		checkName(t, name)
		n := 0
		next := ServiceName(b, func(string) bool { n++; return n < 3 })
		checkName(t, next)
	})
}
