package consensus

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// TokenHash is the form in which a token secret is stored (Token.Hash): hex
// sha256. Tokens are random and long, so a plain hash suffices; a slow
// password hash would only cost every request.
func TokenHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// TokenForSecret finds the token whose hash matches secret, revoked or not;
// the caller checks Revoked and Scope. Every stored hash is compared in
// constant time, so response timing does not reveal near misses.
func (s *ClusterState) TokenForSecret(secret string) (Token, bool) {
	want := []byte(TokenHash(secret))
	var found Token
	ok := false
	for _, t := range s.Tokens {
		if subtle.ConstantTimeCompare([]byte(t.Hash), want) == 1 {
			found, ok = t, true
		}
	}
	return found, ok
}
