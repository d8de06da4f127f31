package coordinator

import (
	"slices"
	"testing"
)

// TestCacheScopes is the matrix of who reads and writes which cache, as
// GitHub Actions scopes its caches against poisoning.
func TestCacheScopes(t *testing.T) {
	for _, tt := range []struct {
		name  string
		s     Subject
		read  []string
		write string
	}{
		{"pull request", Subject{PullRequest: 7, Branch: "feature", BaseBranch: "main", DefaultBranch: "main"},
			[]string{"pull/7", "branch/main"}, "pull/7"},
		{"pull request into another branch", Subject{PullRequest: 7, Branch: "fix", BaseBranch: "release-1", DefaultBranch: "main"},
			[]string{"pull/7", "branch/release-1"}, "pull/7"},
		{"untrusted pull request reads, never writes", Subject{PullRequest: 8, Branch: "main", BaseBranch: "main", Untrusted: true, Fork: true},
			[]string{"pull/8", "branch/main"}, ""},
		{"pull request whose base is not known", Subject{PullRequest: 9, Branch: "x"}, []string{"pull/9"}, "pull/9"},
		{"push to the default branch writes the default branch's", Subject{Branch: "main", DefaultBranch: "main"},
			[]string{"branch/main"}, "branch/main"},
		{"push to another branch", Subject{Branch: "feature/x", DefaultBranch: "main"},
			[]string{"branch/feature/x", "branch/main"}, "branch/feature/x"},
		{"push, default branch unknown", Subject{Branch: "dev"}, []string{"branch/dev"}, "branch/dev"},
		{"no branch, no pull request", Subject{Trigger: "api"}, nil, ""},
	} {
		read, write := tt.s.CacheScopes()
		if !slices.Equal(read, tt.read) || write != tt.write {
			t.Errorf("%s: read %q, write %q; want %q, %q", tt.name, read, write, tt.read, tt.write)
		}
	}
}
