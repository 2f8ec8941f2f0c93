package testports

import "testing"

// TestReservePortOutsideEphemeralRangeAndExclusive: reserved ports lie outside the
// kernel's ephemeral range (so no outgoing connection takes one while its node is
// down), are bindable, and one reserved port is refused to every other reservation
// until the test that holds it ends.
func TestReservePortOutsideEphemeralRangeAndExclusive(t *testing.T) {
	lo, hi := Range()
	seen := map[int]bool{}
	for range 20 {
		port := Loopback(t, false)
		if port < lo || port > hi {
			t.Fatalf("port %d outside [%d, %d]", port, lo, hi)
		}
		if seen[port] {
			t.Fatalf("port %d reserved twice", port)
		}
		seen[port] = true
		if f, err := lockPort(port); err == nil {
			f.Close()
			t.Fatalf("port %d could be locked again while reserved", port)
		}
	}
}
