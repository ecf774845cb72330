// Package client submits batches to hafe front-ends and rides out their
// failures. Submit sends a batch with an Idempotency-Key; when the stream
// breaks (connection reset, end of stream before the summary line, an
// "interrupted" error line) or a front-end answers 503 or 409, it sends the
// same key and the same body to the next front-end of its list, which
// resumes the batch where the back-end says it stands.
//
// The invariant a reader must keep in mind: the caller sees each
// transaction's line at most once, in seq order, and a line that a resumed
// stream replays must be byte-identical to the one seen before (guarantee
// G3). A replay that differs is a *ContinuityError, never silently skipped.
package client
