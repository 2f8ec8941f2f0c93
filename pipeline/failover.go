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
