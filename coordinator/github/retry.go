package github

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	gh "github.com/google/go-github/v62/github"
)

// retryPolicy bounds the retries of one GitHub call: at most tries
// attempts, waits growing from base (doubling, with jitter, capped at max)
// unless GitHub says how long (Retry-After, a rate limit's reset), and
// everything, calls included, within budget.
type retryPolicy struct {
	tries         int
	base, max     time.Duration
	budget        time.Duration
	maxRetryAfter time.Duration // a longer Retry-After is not waited for
}

var defaultRetry = retryPolicy{tries: 5, base: 500 * time.Millisecond, max: 8 * time.Second,
	budget: 60 * time.Second, maxRetryAfter: 30 * time.Second}

// do runs fn until it succeeds or fails in a way that retrying cannot
// help. The error returned is fn's last one.
func (p retryPolicy) do(ctx context.Context, log *slog.Logger, what string, fn func(ctx context.Context) (*gh.Response, error)) error {
	ctx, cancel := context.WithTimeout(ctx, p.budget)
	defer cancel()
	deadline, _ := ctx.Deadline()
	for try := 1; ; try++ {
		resp, err := fn(ctx)
		if err == nil {
			return nil
		}
		after, ok := retryable(err, resp)
		if !ok || try >= p.tries || ctx.Err() != nil {
			if try > 1 {
				return fmt.Errorf("%w (after %d tries)", err, try)
			}
			return err
		}
		wait := after
		if wait <= 0 {
			wait = p.backoff(try)
		} else if wait > p.maxRetryAfter {
			return fmt.Errorf("%w (GitHub asks to wait %v)", err, wait.Round(time.Second))
		}
		if time.Until(deadline) < wait {
			return fmt.Errorf("%w (out of retry time after %d tries)", err, try)
		}
		log.Debug("github call failed; retrying", "call", what, "try", try, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (after %d tries)", err, try)
		case <-t.C:
		}
	}
}

// backoff is the wait after the try-th failure: base·2^(try-1), capped,
// with "equal jitter" (half fixed, half random) so that many senders that
// failed together do not retry together.
func (p retryPolicy) backoff(try int) time.Duration {
	d := p.base
	for i := 1; i < try && d < p.max; i++ {
		d *= 2
	}
	d = min(d, p.max)
	if d < 2 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// retryable classifies a failed call: server errors (5xx), rate limits
// (primary, secondary, 429) and network errors may pass; a 4xx will not.
// after is how long GitHub asked us to wait, 0 when it did not say.
func retryable(err error, resp *gh.Response) (after time.Duration, ok bool) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return 0, false
	}
	var abuse *gh.AbuseRateLimitError
	if errors.As(err, &abuse) {
		if abuse.RetryAfter != nil {
			return *abuse.RetryAfter, true
		}
		return 0, true
	}
	var rate *gh.RateLimitError
	if errors.As(err, &rate) {
		return time.Until(rate.Rate.Reset.Time), true
	}
	// A token that could not be had: the token endpoint's own answer
	// decides, and no answer at all is a network error.
	var tok *ghinstallation.HTTPError
	if errors.As(err, &tok) {
		if tok.Response == nil {
			return 0, true
		}
		return retryableStatus(tok.Response)
	}
	var er *gh.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		return retryableStatus(er.Response)
	}
	if resp != nil && resp.Response != nil && resp.StatusCode >= 300 {
		// go-github's GetArchiveLink reports an unexpected status as a
		// plain error with the response.
		return retryableStatus(resp.Response)
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) {
		return 0, true
	}
	return 0, false
}

func retryableStatus(r *http.Response) (time.Duration, bool) {
	if r.StatusCode >= 500 || r.StatusCode == http.StatusTooManyRequests {
		return retryAfter(r.Header.Get("Retry-After")), true
	}
	return 0, false
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// statusOf is the HTTP status of a failed GitHub call, 0 when there was
// no answer.
func statusOf(err error) int {
	var er *gh.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		return er.Response.StatusCode
	}
	var rate *gh.RateLimitError
	if errors.As(err, &rate) && rate.Response != nil {
		return rate.Response.StatusCode
	}
	var abuse *gh.AbuseRateLimitError
	if errors.As(err, &abuse) && abuse.Response != nil {
		return abuse.Response.StatusCode
	}
	return 0
}
