package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

const (
	// MaxNameLen is the longest service name: swarm uses it as a DNS label.
	MaxNameLen = 63
	// nameHashLen is the length of the hash added to a cut name. 8 hex
	// digits (32 bits) make an accidental clash between two cut names of
	// the same second negligible.
	nameHashLen = 8
	// maxNameTries bounds the -2, -3, ... suffixes tried when taken keeps
	// saying yes, so that a broken taken cannot loop forever.
	maxNameTries = 1000
	namePrefix   = "forge"
	// nameTimeFormat is YYYYmmddTHHMMSS; the name is lower-cased, so the
	// T is written t.
	nameTimeFormat = "20060102T150405"
)

// ServiceName returns the service name of build b:
//
//	forge-{owner}-{repo}-{pr}-{YYYYmmddtHHMMSS}
//
// with the branch in place of the pull-request number for a push. The name
// is lower-cased; any other character outside [a-z0-9-] becomes "-"; runs of
// "-" are collapsed and no part starts or ends with one.
//
// A name longer than 63 characters (a DNS label) is cut: the owner, repo and
// branch share what room is left, the longest part giving way first, and a
// short hash of the whole uncut name goes before the timestamp, which is
// always kept:
//
//	forge-{owner'}-{repo'}-{branch'}-{hash}-{timestamp}
//
// so two names that differ only past the cut stay distinct.
//
// taken may be nil. Otherwise, while taken(name) is true, ServiceName tries
// name-2, name-3, ... (cut as needed to stay within 63 characters); after
// 1000 tries it returns the last one and leaves the collision to Docker.
func ServiceName(b Build, taken func(string) bool) string {
	ref := b.Branch
	if b.PullRequest > 0 {
		ref = strconv.Itoa(b.PullRequest)
	} else if ref == "" {
		ref = strings.TrimPrefix(b.Ref, "refs/heads/")
	}
	var parts []string
	for _, p := range []string{b.Owner, b.Repo, ref} {
		if s := sanitize(p); s != "" {
			parts = append(parts, s)
		}
	}
	stamp := sanitize(b.Created.UTC().Format(nameTimeFormat))
	full := strings.Join(append(append([]string{namePrefix}, parts...), stamp), "-")

	name := fitName(parts, stamp, full, "")
	for n := 2; taken != nil && taken(name) && n <= maxNameTries; n++ {
		name = fitName(parts, stamp, full, "-"+strconv.Itoa(n))
	}
	return name
}

// fitName returns full+suffix when that fits in a DNS label, and otherwise
// the cut form described at ServiceName.
func fitName(parts []string, stamp, full, suffix string) string {
	if len(full)+len(suffix) <= MaxNameLen {
		return full + suffix
	}
	sum := sha256.Sum256([]byte(full))
	hash := hex.EncodeToString(sum[:])[:nameHashLen]
	tail := "-" + hash + "-" + stamp + suffix
	room := MaxNameLen - len(namePrefix) - len(tail)
	var b strings.Builder
	b.WriteString(namePrefix)
	for _, p := range shorten(parts, room) {
		b.WriteString("-" + p)
	}
	b.WriteString(tail)
	return b.String()
}

// shorten cuts parts so that, each preceded by "-", they fit in room
// bytes. It finds the largest length every part may keep (short parts keep
// all of theirs, long ones are cut to that length), so a pull-request number
// survives and a long branch name gives way first. Parts are ASCII here.
func shorten(parts []string, room int) []string {
	fits := func(limit int) bool {
		n := 0
		for _, p := range parts {
			n += 1 + min(len(p), limit)
		}
		return n <= room
	}
	limit := max(room, 0) // no part can keep more than the room
	for limit > 0 && !fits(limit) {
		limit--
	}
	var out []string
	for _, p := range parts {
		// Cutting may leave a "-" at the end of a part.
		if s := strings.Trim(p[:min(len(p), limit)], "-"); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// sanitize lower-cases s, turns every character outside [a-z0-9-] into
// "-", collapses runs of "-" and trims them from both ends.
func sanitize(s string) string {
	var b strings.Builder
	dash := true // drop leading dashes
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}
