// Package netwait waits for a connection to become readable without a
// read buffer, so that an idle connection holds none: a relay or a frame
// reader takes a pooled buffer only once bytes have arrived.
package netwait
