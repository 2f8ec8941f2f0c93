package consensus

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkApply measures one committed write on a 3-node cluster over real
// libp2p on loopback, with badger syncing every log write: sent on the leader,
// and sent on a follower (one extra forwarding round trip).
func BenchmarkApply(b *testing.B) {
	c := startCluster(b, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	leader := c.waitLeader(5 * time.Second)
	for _, tc := range []struct {
		name string
		node int
	}{{"leader", leader}, {"follower", c.follower(leader)}} {
		b.Run(tc.name, func(b *testing.B) {
			s := c.nodes[tc.node].store
			ctx := context.Background()
			i := 0
			for b.Loop() {
				i++
				if _, err := s.Apply(ctx, NewCommand(CatalogPut{Key: fmt.Sprintf("k%d", i%100), Value: "v"})); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLinearizableRead measures Read(ctx, true) on the leader (a barrier)
// and on a follower (forwarded barrier, then wait for the local FSM).
func BenchmarkLinearizableRead(b *testing.B) {
	c := startCluster(b, 3, nil)
	c.waitVoters(10*time.Second, []int{0, 1, 2}, nil)
	leader := c.waitLeader(5 * time.Second)
	for _, tc := range []struct {
		name string
		node int
	}{{"leader", leader}, {"follower", c.follower(leader)}} {
		b.Run(tc.name, func(b *testing.B) {
			s := c.nodes[tc.node].store
			for b.Loop() {
				if _, err := s.Read(context.Background(), true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
