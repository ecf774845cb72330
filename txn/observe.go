package txn

// Retry causes an Observer is told about.
const (
	RetrySerialization = "serialization_failure" // SQLSTATE 40001: the slot runs again
	RetryDeadlock      = "deadlock"              // SQLSTATE 40P01: the slot runs again
	RetryDatabaseLost  = "database_lost"         // the slot is settled by looking its outcome up
)

// Fence kinds an Observer is told about.
const (
	// FenceBlocker: a previous owner's session held the batch past
	// Config.FenceGrace and was terminated.
	FenceBlocker = "blocker"
	// FencePreviousRun: a run that is gone left transactions open; they
	// were terminated when its batch was taken over.
	FencePreviousRun = "previous_run"
)

// Observer is told what an executor does as it happens, so a front-end can
// count it. Its methods are called from the goroutines running batches and
// must not block.
type Observer interface {
	// Outcome is called once per slot of a batch when its outcome is
	// durable and about to be reported. replayed is true when this lease
	// did not record it: it was found recorded by an earlier owner (a
	// resumed batch) or by a racing executor.
	Outcome(status string, replayed bool)
	// Retry is called when a slot is tried again, with one of the Retry*
	// causes.
	Retry(cause string)
	// TakeOver is called when this executor claims a batch that was
	// started elsewhere or earlier (its epoch moves on), with how it came
	// here: one of the Via* causes.
	TakeOver(via string)
	// Fence is called with the number of sessions terminated to fence a
	// previous owner, and one of the Fence* kinds.
	Fence(kind string, sessions int)
}

// How a batch came to the executor that takes it over.
const (
	// ViaMigration: the client's MTCP connection moved here (OpenRequest.Migrated).
	ViaMigration = "migration"
	// ViaRetry: the client sent the request again with its Idempotency-Key.
	ViaRetry = "retry"
)

type nopObserver struct{}

func (nopObserver) Outcome(string, bool) {}
func (nopObserver) Retry(string)         {}
func (nopObserver) TakeOver(string)      {}
func (nopObserver) Fence(string, int)    {}
