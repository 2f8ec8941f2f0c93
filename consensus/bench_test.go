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

// BenchmarkLeaderFailover kills the leader of a 3-node cluster without
// warning (host closed, raft stopped, no transfer) and measures the time until
// the two survivors agree on a new leader, with raft's default timings (the
// ones meshnode uses): heartbeat 1s, election 1s, leader lease 500ms. The
// killed node restarts from its data dir before the next round.
func BenchmarkLeaderFailover(b *testing.B) {
	c := startCluster(b, 3, func(cfg *Config) {
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 0, 0, 0 // defaults
	})
	c.waitVoters(15*time.Second, []int{0, 1, 2}, nil)
	var total time.Duration
	var worst time.Duration
	rounds := 0
	for b.Loop() {
		b.StopTimer()
		old := c.waitLeader(20 * time.Second)
		b.StartTimer()
		start := time.Now()
		c.kill(old)
		c.waitLeader(20 * time.Second)
		d := time.Since(start)
		b.StopTimer()
		total += d
		worst = max(worst, d)
		rounds++
		c.start(old, false)
		// Let the restarted node catch up so the next kill hits a full cluster.
		applyVia(b, c.nodes[old].store, CatalogPut{Key: "round", Value: fmt.Sprint(rounds)})
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(rounds), "ms/failover")
	b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
}
