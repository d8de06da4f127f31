package forgexec

import (
	"errors"
	"strings"
)

// SplitWords splits a command into words the way a POSIX shell does, for
// quoting only. It is used when the image has no /bin/sh, so that simple
// commands written for a shell still run with the same arguments.
//
// What it does:
//
//   - Blanks (space, tab, newline) outside quotes separate words; runs of
//     blanks count as one separator.
//   - Single quotes keep every character literal up to the next single quote;
//     a single quote cannot appear inside them.
//   - Double quotes keep every character literal except a backslash followed
//     by $, `, ", \ or newline: the backslash is removed and the next
//     character kept (a backslash-newline pair is removed entirely). Any
//     other backslash inside double quotes stays as is.
//   - An unquoted backslash keeps the next character literal; an unquoted
//     backslash-newline is a line continuation and is removed.
//   - Quoted and unquoted parts next to each other make one word, and a
//     pair of quotes with nothing between them makes an empty word.
//
// For example:
//
//	a'b c'"d"      one word: ab cd
//	x '' y         three words: x, the empty word, y
//	echo "\$HOME"  two words: echo, $HOME
//
// What it does NOT do (each of these characters is kept as literal text):
//
//   - no variable or parameter expansion: $HOME, ${X:-y} and $1 stay as
//     written;
//   - no command substitution ($(...) or `...`) and no arithmetic ($((...)));
//   - no globbing: *, ? and [...] are not matched against files;
//   - no tilde expansion: ~ and ~user stay as written;
//   - no pipes, redirections, lists or background jobs: |, >, <, ;, && and &
//     become (parts of) ordinary words;
//   - no comments: # is an ordinary character;
//   - no assignments: FOO=bar cmd runs a program named "FOO=bar".
//
// Errors: an unterminated single or double quote, a trailing lone backslash,
// and a command with no words at all (empty or blank).
func SplitWords(s string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool // a word has started, even if it is empty so far ('')
	)
	// The input is handled byte by byte: every special character is ASCII
	// and UTF-8 never uses ASCII bytes inside a multi-byte sequence.
	for i := 0; i < len(s); {
		c := s[i]
		switch c {
		case ' ', '\t', '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
			i++
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			inWord = true
			i += end + 2
		case '"':
			inWord = true
			i++
			for {
				if i >= len(s) {
					return nil, errors.New("unterminated double quote")
				}
				c := s[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
					if s[i+1] != '\n' {
						cur.WriteByte(s[i+1])
					}
					i += 2
					continue
				}
				cur.WriteByte(c)
				i++
			}
		case '\\':
			if i+1 >= len(s) {
				return nil, errors.New("trailing backslash with nothing to escape")
			}
			if s[i+1] != '\n' { // backslash-newline: continuation, removed
				cur.WriteByte(s[i+1])
				inWord = true
			}
			i += 2
		default:
			cur.WriteByte(c)
			inWord = true
			i++
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, errors.New("empty command")
	}
	return words, nil
}
