package mtcp

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"

	"hafe.dev/hafe/mtcp/internal/wire"
)

const secretLen = 32

func randomID() (id ConnID) {
	_, _ = rand.Read(id[:])
	return id
}

func randomSecret() []byte {
	b := make([]byte, secretLen)
	_, _ = rand.Read(b)
	return b
}

// migrateMAC authenticates a MIGRATE with the connection's secret. It covers
// every field, so neither the counter nor the origin can be altered.
func migrateMAC(secret []byte, m wire.Migrate) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("mtcp migrate v1\x00"))
	h.Write(m.ConnID[:])
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], m.Counter)
	binary.BigEndian.PutUint64(b[8:], m.RecvOff)
	h.Write(b[:])
	h.Write([]byte(m.Origin))
	return h.Sum(nil)
}

// prepareMAC binds a PREPARE's target to the MIGRATE it announces.
func prepareMAC(secret []byte, m wire.Migrate, target string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("mtcp prepare v1\x00"))
	h.Write(m.MAC)
	h.Write([]byte(target))
	return h.Sum(nil)
}

// checkMigrate is a server's verdict on a MIGRATE for a connection with the
// given secret whose last accepted migration counter is last. 0 means accept.
func checkMigrate(secret []byte, last uint64, m wire.Migrate) RefusalCode {
	if !hmac.Equal(migrateMAC(secret, m), m.MAC) {
		return RefuseBadMAC
	}
	if m.Counter <= last {
		return RefuseReplayedCounter
	}
	return 0
}

// peerProof proves knowledge of the cluster key for one side of a peer
// handshake. It covers both nonces and the names of the dialling server
// and of the server it meant to reach, in that order, so it holds only
// between those two servers in that direction: a party without the key
// that relays one server's handshake to another gets proofs for the wrong
// pair. The two sides use different labels so a proof cannot be reflected
// back.
func peerProof(key []byte, label string, hello wire.PeerHello, serverNonce [32]byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(label))
	h.Write(hello.Nonce[:])
	h.Write(serverNonce[:])
	for _, name := range []string{hello.From, hello.To} {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(name))))
		h.Write([]byte(name))
	}
	return h.Sum(nil)
}

const (
	peerLabelServer = "mtcp peer server v2\x00"
	peerLabelClient = "mtcp peer client v2\x00"
)
