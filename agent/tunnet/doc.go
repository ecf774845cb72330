// Package tunnet terminates applications' TCP connections to virtual
// service addresses inside the agent: it creates a TUN device, routes each
// service address to it, and runs a gVisor netstack on the device's packets
// whose listeners hand each accepted connection out as a net.Conn, for the
// agent to carry over MTCP like one accepted on its local listener. An
// application then talks to a plain address (http://10.77.0.1/...) with no
// proxy settings, as through a userspace VPN.
//
// The invariant: the device and its routes live exactly as long as the
// Interface that made them. The device is created exclusively (never an
// existing one taken over) and is not persistent, so the kernel removes it,
// and its routes with it, when the process's descriptor closes, even after
// a SIGKILL; Close also deletes the routes itself first.
//
// Creating the device and its routes needs Linux and CAP_NET_ADMIN (root).
package tunnet
