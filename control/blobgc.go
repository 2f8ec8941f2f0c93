package control

// Stage, source and tokenizer blobs stay on disk while some model version in the cluster state
// names them. Once none does (the model was deleted or its version superseded), each
// node removes them after a grace period, so a device that deploys and replaces models
// for months does not fill its disk.

import (
	"context"
	"time"
)

const (
	// blobGCInterval is how often a node looks for blobs no model names.
	blobGCInterval = time.Minute
	// blobGCGrace is how long a blob no model names is kept after it was last
	// stored or touched: an upload being cut, or stage blobs written before their
	// manifest is committed, are not referenced yet.
	blobGCGrace = 10 * time.Minute
)

// blobGCLoop removes unreferenced blobs every blobGCInterval.
func (c *Controller) blobGCLoop(ctx context.Context) {
	everyTick(ctx, blobGCInterval, func() { c.CollectBlobs(blobGCGrace) })
}

// CollectBlobs removes the blobs (complete or partial) that no model version in the
// cluster state names and that nobody stored, touched or fetched into for grace. It
// does nothing until this node's state has caught up with the leader's: a node behind
// the log would take blobs of models it has not heard of yet for garbage. It returns
// how many blobs it removed and the bytes they held.
func (c *Controller) CollectBlobs(grace time.Duration) (removed int, freed int64) {
	if !c.cfg.CaughtUp() {
		return 0, 0
	}
	st := c.store.View()
	keep := make(map[string]bool)
	for _, m := range st.Models {
		keep[m.SourceSHA256] = true
		if m.Text != nil {
			keep[m.Text.TokenizerSHA256] = true
		}
		for _, s := range m.Stages {
			keep[s.SHA256] = true
		}
	}
	store := c.blobs
	blobs, err := store.List()
	if err != nil {
		c.log.Warn("listing blobs for collection", "err", err)
		return 0, 0
	}
	cutoff := time.Now().Add(-grace)
	for _, b := range blobs {
		if keep[b.Hash] || b.Touched.After(cutoff) {
			continue
		}
		if err := store.Remove(b.Hash); err != nil {
			c.log.Warn("removing an unreferenced blob", "blob", b.Hash, "err", err)
			continue
		}
		removed++
		freed += b.Size
		c.log.Info("removed a blob no model names", "blob", b.Hash, "bytes", b.Size, "complete", b.Complete)
	}
	return removed, freed
}
