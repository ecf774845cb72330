// Package frontend is the HTTP face of a hafe front-end: the batch API, its
// streaming responses, idempotent resumption, health, metrics and operator
// routes.
//
// The invariant: a response line is written only after the txn executor has
// made the slot's outcome durable; the frontend never renders a report itself.
package frontend
