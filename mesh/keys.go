package mesh

import (
	"crypto/sha256"
	"io"

	"golang.org/x/crypto/hkdf"
)

// Purposes of keys derived from the cluster secret; each gets an independent key.
const (
	keyGossip = "layermesh gossip v1"
	keyJoin   = "layermesh join v1"
	keyPSK    = "layermesh pnet v1"
)

// deriveKey expands the cluster secret into a 32-byte key for one purpose, salted with
// the cluster id so two clusters sharing a secret by accident still do not interoperate.
func deriveKey(secret []byte, clusterID, purpose string) []byte {
	r := hkdf.New(sha256.New, secret, []byte(clusterID), []byte(purpose))
	key := make([]byte, 32)
	if _, err := io.ReadFull(r, key); err != nil {
		// HKDF-SHA256 can produce 8160 bytes; 32 never fails.
		panic(err)
	}
	return key
}
