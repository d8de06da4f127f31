package store

import (
	"database/sql"
	"fmt"
	"math"
	"time"
)

// Times are stored as INTEGER unix nanoseconds (UTC by definition) and a
// zero time.Time as NULL. Unix nanoseconds in an int64 cover the years 1678
// to 2262; anything else but the zero time is refused rather than silently
// wrapped (time.UnixNano is undefined outside that range).
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// dbTime is the stored form of t: nil for the zero time, else unix nanos.
func dbTime(field string, t time.Time) (any, error) {
	if t.IsZero() {
		return nil, nil
	}
	if t.Before(minTime) || t.After(maxTime) {
		return nil, fmt.Errorf("%s %s is outside the storable range", field, t.Format(time.RFC3339Nano))
	}
	return t.UnixNano(), nil
}

// goTime is the time.Time of a stored value, in UTC; NULL gives the zero time.
func goTime(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

// now is the store's clock for defaults (Created, Finished, LastSeen).
var now = func() time.Time { return time.Now().UTC() }
