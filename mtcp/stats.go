package mtcp

import (
	"fmt"
	"time"
)

// Role is a party's part in a migration.
type Role uint8

const (
	RoleClient    Role = iota // initiates: initiate / wait / complete
	RoleNewServer             // takes over: prepare request / wait reply / reinstate
	RoleOrigin                // hands over: prepare reply
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleNewServer:
		return "new-server"
	case RoleOrigin:
		return "origin"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Mode is where a new server got the connection's state from.
type Mode uint8

const (
	ModeLazy  Mode = iota // from the origin over the peer channel
	ModeEager             // from the snapshot store
	ModeLocal             // the connection was already here (path re-established)
)

func (m Mode) String() string {
	switch m {
	case ModeLazy:
		return "lazy"
	case ModeEager:
		return "eager"
	case ModeLocal:
		return "local"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Migration triggers, as MigrationStats.Trigger names them.
const (
	TriggerRequest     = "request"      // the application called Conn.Migrate
	TriggerPathFailure = "path_failure" // the path broke, fell silent or made no progress
	TriggerRate        = "rate"         // the rate policy found the path slow
	TriggerRedirect    = "redirect"     // the server asked (drain, overload)
)

// MigrationStats describes one migration as one party saw it. Only the
// durations of the party's Role are set.
type MigrationStats struct {
	ConnID   ConnID
	Role     Role
	Mode     Mode
	From, To string // origin and new server addresses, when known
	// Trigger is why the client moved: TriggerRequest,
	// TriggerPathFailure, TriggerRate or TriggerRedirect on the client;
	// on an origin TriggerRedirect when it had asked the client to move
	// (Conn.Redirect, Listener.Drain), else empty.
	Trigger    string
	StateBytes int   // snapshot + input log + output transferred
	Err        error // nil on success
	// Pushed: the client sent PREPARE on its old path and the origin
	// pushed the state to the new server (client: PREPARE sent; origin:
	// pushed; new server: the MIGRATE found the pushed state).
	Pushed bool

	// Client.
	Standby  bool          // the warm standby path carried the MIGRATE
	Initiate time.Duration // dial (or take the standby path) and send MIGRATE
	Wait     time.Duration // until ACCEPTED or REFUSE arrives
	Complete time.Duration // reattach the stream and resume sending

	// New server.
	PrepareRequest time.Duration // parse and check MIGRATE, send FETCH
	WaitReply      time.Duration // until the origin's or store's answer, or the pushed state
	Reinstate      time.Duration // verify, rebuild the connection, send ACCEPTED

	// Origin.
	PrepareReply time.Duration // freeze the connection and take its state
}

// Total is the sum of the role's phases.
func (s MigrationStats) Total() time.Duration {
	return s.Initiate + s.Wait + s.Complete + s.PrepareRequest + s.WaitReply + s.Reinstate + s.PrepareReply
}
