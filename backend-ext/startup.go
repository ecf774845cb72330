package backendext

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled means the database has no hafe objects, or older ones
// than this build needs: hafe db install brings it up to date.
var ErrNotInstalled = errors.New("hafe is not installed in this database")

// InstalledVersion is the version of hafe in the database, as an extension
// or as a plain schema; "" when there is none.
func InstalledVersion(ctx context.Context, db DB) (string, error) {
	var v string
	err := db.QueryRow(ctx, "SELECT extversion FROM pg_extension WHERE extname = 'hafe'").Scan(&v)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("read hafe version: %w", err)
	}
	var exists bool
	if err := db.QueryRow(ctx, "SELECT to_regclass('hafe.schema_version') IS NOT NULL").Scan(&exists); err != nil {
		return "", fmt.Errorf("read hafe version: %w", err)
	}
	if !exists {
		return "", nil
	}
	err = db.QueryRow(ctx, "SELECT version FROM hafe.schema_version ORDER BY applied_at DESC, version DESC LIMIT 1").Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read hafe version: %w", err)
	}
	return v, nil
}

// CheckInstalled returns an error wrapping ErrNotInstalled unless the
// database holds hafe DefaultVersion or newer.
func CheckInstalled(ctx context.Context, db DB) error {
	v, err := InstalledVersion(ctx, db)
	if err != nil {
		return err
	}
	switch {
	case v == "":
		return ErrNotInstalled
	case compareVersions(v, DefaultVersion) < 0:
		return fmt.Errorf("%w: it holds hafe %s, this build needs %s", ErrNotInstalled, v, DefaultVersion)
	}
	return nil
}

// MemberAliveError means another run of a front-end with the same id is
// heartbeating: two front-ends under one name would take each other's
// batches for their own.
type MemberAliveError struct {
	ID           string
	HTTPAddr     string
	HeartbeatAge time.Duration // when it was last seen
}

func (e *MemberAliveError) Error() string {
	return fmt.Sprintf("a front-end with id %q is already running (serving %s, heartbeat %s ago)",
		e.ID, e.HTTPAddr, e.HeartbeatAge.Round(time.Millisecond))
}

// CheckMemberIDFree returns a *MemberAliveError when another run of the
// front-end id is alive. A row with a fresh heartbeat may be left by a run
// that just crashed: it is watched, every poll, until its heartbeat either
// moves (alive: refused) or grows older than liveness (gone: fine), so a
// restart right after a crash waits at most liveness instead of failing.
// waiting is called once when it has to watch.
func CheckMemberIDFree(ctx context.Context, db DB, id string, liveness, poll time.Duration, waiting func(age time.Duration)) error {
	var first time.Time
	for i := 0; ; i++ {
		var (
			addr   string
			beatAt time.Time
			age    float64
		)
		err := db.QueryRow(ctx, `SELECT http_addr, heartbeat_at, greatest(extract(epoch FROM now() - heartbeat_at)::float8, 0)
			FROM hafe.members WHERE id = $1`, id).Scan(&addr, &beatAt, &age)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read member %s: %w", id, err)
		}
		ageD := time.Duration(age * float64(time.Second))
		if ageD > liveness {
			return nil
		}
		if i == 0 {
			first = beatAt
			if waiting != nil {
				waiting(ageD)
			}
		} else if !beatAt.Equal(first) {
			return &MemberAliveError{ID: id, HTTPAddr: addr, HeartbeatAge: ageD}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}
