package harness

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"
)

// GarbageVerdict is what a server did with a connection that sent it garbage.
type GarbageVerdict int

// Verdicts of GarbageTCP.
const (
	// GarbageClosed: the server closed or reset the connection, having answered nothing
	// or something of its own; the clean refusal.
	GarbageClosed GarbageVerdict = iota
	// GarbageHeldOpen: the server neither closed nor stopped reading until the timeout:
	// a peer could pin its resources with junk.
	GarbageHeldOpen
)

func (v GarbageVerdict) String() string {
	if v == GarbageClosed {
		return "closed"
	}
	return "held open"
}

// GarbageTCP connects to addr, sends size pseudo-random bytes drawn from seed (a
// reproducible junk frame, as a broken or hostile peer would send), and reads until the
// server closes the connection or timeout passes. It returns what the server answered
// before closing, for logs.
func GarbageTCP(ctx context.Context, dial DialFunc, addr string, size int, seed uint64, timeout time.Duration) (GarbageVerdict, []byte, error) {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	junk := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	// A server may close mid-write; that is a refusal too, so write errors are not
	// failures here.
	_, _ = c.Write(junk)
	answer, err := io.ReadAll(io.LimitReader(c, 1<<20))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return GarbageHeldOpen, answer, nil
	}
	return GarbageClosed, answer, nil
}
