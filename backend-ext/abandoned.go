package backendext

import "errors"

// BatchAbandoned names unfinished batches no live run of a front-end owns:
// released by a front-end whose client left, or left by one that is gone.
// A retry with the batch's key resumes it on any front-end; retention
// collects it once it has been left alone longer than that.
const BatchAbandoned = "abandoned"

// ErrUnknownState means a listing asked for a state other than running,
// done or abandoned.
var ErrUnknownState = errors.New("unknown batch state (want running, done or abandoned)")

// collectAbandonedSQL deletes unfinished batches (and their outcomes and
// takeovers) left
// alone for longer than the retention ($1 seconds) whose owner's run has
// not heartbeat within it either: nobody resumed them in all that time.
const collectAbandonedSQL = `WITH gone AS (
		SELECT b.batch_id FROM hafe.batches b
		 WHERE b.state = 'running' AND b.updated_at < now() - make_interval(secs => $1::float8)
		   AND NOT EXISTS (SELECT 1 FROM hafe.members m WHERE m.id = b.owner AND m.incarnation = b.owner_incarnation
		                      AND m.heartbeat_at > now() - make_interval(secs => $1::float8))
		   FOR UPDATE OF b SKIP LOCKED),
	o AS (DELETE FROM hafe.outcomes WHERE batch_id IN (SELECT batch_id FROM gone) RETURNING 1),
	t AS (DELETE FROM hafe.takeovers WHERE batch_id IN (SELECT batch_id FROM gone) RETURNING 1),
	d AS (DELETE FROM hafe.batches WHERE batch_id IN (SELECT batch_id FROM gone) RETURNING 1)
	SELECT (SELECT count(*) FROM o) + (SELECT count(*) FROM t) + (SELECT count(*) FROM d)`
