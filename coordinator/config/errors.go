package config

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Error is one problem found in a .forge.yml. Parse returns every problem
// it finds as an errors.Join of *Error values, sorted by position; use
// [Errors] to get them all, or errors.As for the first.
type Error struct {
	// File is the name given to Parse, usually ".forge.yml".
	File string
	// Line and Column locate the problem, counting from 1. Zero means the
	// problem concerns the whole file (a required key is missing) or the
	// position is unknown; a YAML syntax error has a line but no column.
	Line, Column int
	// Key is the path of the value at fault: "timeout",
	// "environment.GOFLAGS", "on.push.main", "resources.memory", "execute"
	// (the line locates the item in a list). For a problem with a key
	// itself (unknown, repeated, badly named) Key is the path of the
	// enclosing mapping, empty at the top level, and Msg names the key.
	Key string
	// Msg says what is wrong, and how to fix it when that is not obvious.
	Msg string
}

// Error formats the problem the way compilers do, so editors and terminals
// can jump to it:
//
//	.forge.yml:7:3: timeout: "3 days" is not a duration (use 30m, 1h)
//	.forge.yml:2:1: unknown key "imagee"
//	.forge.yml: image is required
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteString(":" + strconv.Itoa(e.Column))
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns every *Error inside err, in order: err itself, errors
// joined with errors.Join, and errors wrapped with %w, at any depth. It
// returns nil when err holds none.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				walk(inner)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// Summary returns err as a single line of at most max characters (runes),
// for places that only hold a line, such as a GitHub commit status
// description (140 characters). With several config errors it shows the
// first one followed by "(+N more)"; text that does not fit is cut and
// ends with "…". A max below 1 means no limit.
func Summary(err error, max int) string {
	if err == nil {
		return ""
	}
	first, more := err.Error(), 0
	if list := Errors(err); len(list) > 0 {
		first, more = list[0].Error(), len(list)-1
	}
	first = strings.Join(strings.Fields(first), " ")
	suffix := ""
	if more > 0 {
		suffix = fmt.Sprintf(" (+%d more)", more)
	}
	if max < 1 || utf8.RuneCountInString(first)+utf8.RuneCountInString(suffix) <= max {
		return first + suffix
	}
	// The first error matters more than the count: drop the count when
	// there is not room for both it and a useful part of the message.
	if utf8.RuneCountInString(suffix)*2 > max {
		suffix = ""
	}
	room := max - utf8.RuneCountInString(suffix) - 1 // 1 for the ellipsis
	if room < 0 {
		room = 0
	}
	cut := []rune(first)
	if len(cut) > room {
		cut = cut[:room]
	}
	return strings.TrimRight(string(cut), " ") + "…" + suffix
}

// sortErrors orders problems by position so the list reads top to bottom.
// Problems without a line (a missing key) come last: they are often the
// consequence of a problem above (a misspelt key).
func sortErrors(list []*Error) {
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line == 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// joinErrors turns the list into one error, nil for an empty list.
func joinErrors(list []*Error) error {
	if len(list) == 0 {
		return nil
	}
	errs := make([]error, len(list))
	for i, e := range list {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// quote shows a value from the file inside a message, cut so that a long
// value does not bury the message.
func quote(s string) string {
	const max = 40
	if utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max]) + "…"
	}
	return strconv.Quote(s)
}
