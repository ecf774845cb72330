// Package wire is the MTCP frame codec: Append* functions encode a frame onto
// a byte slice, Parse* functions decode one from a payload.
//
// Every frame is a 5-byte header (type, big-endian payload length) followed by
// the payload. Parsers never read past the payload they are given and refuse
// payloads longer than the per-type bound, so a peer cannot make us allocate
// more than MaxPayload bytes for one frame.
package wire
