// Package redact takes secrets out of text that is stored, logged or shown
// (DESIGN §5): URL queries (a signed download link carries its token
// there), credentials in URLs, bearer tokens and GitHub's tokens.
package redact

import (
	"context"
	"log/slog"
	"regexp"
)

// Mark replaces what is taken out.
const Mark = "[redacted]"

var (
	// A URL's query, up to the next space, quote or closing bracket.
	urlQuery = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://[^\s?"'<>]*)\?[^\s"'<>)\]]*`)
	// user:password@ in a URL.
	urlUserinfo = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@"'<>]+@`)
	// A token named as such: token=..., access_token: ..., Bearer ...
	named = regexp.MustCompile(`(?i)\b((?:access_|refresh_|id_)?token|password|secret|client_secret)(\s*[=:]\s*)("?)[^\s"'&,;]+`)
	// An Authorization header's credential; after "token" only what looks
	// like one (long), so "token verification failed" stays readable.
	bearer = regexp.MustCompile(`(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}|\b(token)\s+[A-Za-z0-9._~+/=-]{20,}`)
	// GitHub's tokens by their prefixes (installation, personal, OAuth,
	// user-to-server, refresh, fine-grained).
	github = regexp.MustCompile(`\b(?:gh[psour]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})`)
)

// String returns s with every secret it can recognise replaced by Mark.
func String(s string) string {
	s = urlQuery.ReplaceAllString(s, "$1?"+Mark)
	s = urlUserinfo.ReplaceAllString(s, "$1"+Mark+"@")
	s = named.ReplaceAllString(s, "$1$2$3"+Mark)
	s = bearer.ReplaceAllString(s, "$1$2 "+Mark)
	return github.ReplaceAllString(s, Mark)
}

// Error is err's text, redacted; "" for nil.
func Error(err error) string {
	if err == nil {
		return ""
	}
	return String(err.Error())
}

// Handler wraps h so that every record's message and string and error
// attributes are redacted before h sees them.
func Handler(h slog.Handler) slog.Handler { return handler{h} }

type handler struct{ h slog.Handler }

func (r handler) Enabled(ctx context.Context, l slog.Level) bool { return r.h.Enabled(ctx, l) }

func (r handler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, String(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(attr(a))
		return true
	})
	return r.h.Handle(ctx, out)
}

func (r handler) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = attr(a)
	}
	return handler{r.h.WithAttrs(clean)}
}

func (r handler) WithGroup(name string) slog.Handler { return handler{r.h.WithGroup(name)} }

// attr redacts one attribute: strings, errors and other values shown as
// text, group members one by one.
func attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, String(v.String()))
	case slog.KindGroup:
		members := v.Group()
		clean := make([]any, len(members))
		for i, m := range members {
			clean[i] = attr(m)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, Error(x))
		case interface{ String() string }:
			return slog.String(a.Key, String(x.String()))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
