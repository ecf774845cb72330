// Package mtcp implements Migratory TCP: a byte-stream connection whose server
// end can move between servers in the middle of the stream.
//
// The invariant: input and output offsets are 64-bit, count bytes since the
// connection was created, and never go backwards across migrations.
package mtcp
