//go:build race

package wire

// raceEnabled: the race detector adds allocations of its own.
const raceEnabled = true
