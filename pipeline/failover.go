package pipeline

// FailoverFunc is told of a stage call that failed on replica from and then
// succeeded on replica to (node ids). drive is true for a request handed to a driver.
// It runs on the request's goroutine: it must return at once.
type FailoverFunc func(model, version string, stage int, drive bool, from, to string)

// OnFailover sets the function told of every failover (the node's event feed); nil
// stops the telling. It may be called while the router serves.
func (r *Router) OnFailover(fn FailoverFunc) {
	if fn == nil {
		r.failoverP.Store(nil)
		return
	}
	r.failoverP.Store(&fn)
}

func (r *Router) reportFailover(call StageCall, from, to string) {
	if fn := r.failoverP.Load(); fn != nil {
		(*fn)(call.Model, call.Version, call.Stage, call.Drive, from, to)
	}
}

// SessionReplayFunc is told of a generation session that lost its replica of stage
// (node id from) and is replaying its tokens on replica to. It runs on the session's
// goroutine, before the replay: it must return at once.
type SessionReplayFunc func(model, version string, stage int, from, to string)

// OnSessionReplay sets the function told of every session replay (the node's event
// feed); nil stops the telling. It may be called while the router serves.
func (r *Router) OnSessionReplay(fn SessionReplayFunc) {
	if fn == nil {
		r.replayP.Store(nil)
		return
	}
	r.replayP.Store(&fn)
}

func (r *Router) reportSessionReplay(plan RoutePlan, stage int, from, to string) {
	if fn := r.replayP.Load(); fn != nil {
		(*fn)(plan.Model, plan.Version, stage, from, to)
	}
}
