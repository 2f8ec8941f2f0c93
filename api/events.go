package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/layermesh/layermesh/events"
)

// EventSource is the node's event bus as GET /v1/events reads it (*events.Bus).
type EventSource interface {
	Subscribe(after uint64) (backlog []events.Event, gap bool, sub *events.Subscription)
	SubscribeRecent(n int) (backlog []events.Event, sub *events.Subscription)
}

const (
	// eventHeartbeat is how often an idle stream gets a comment line, so proxies keep
	// it open and a vanished client is noticed by a failed write.
	eventHeartbeat = 15 * time.Second
	// eventWriteTimeout bounds one write to a stream: a client that stops reading is
	// dropped after this long instead of pinning a handler.
	eventWriteTimeout = 10 * time.Second
	// eventRetryMillis is the reconnection delay the stream suggests to EventSource.
	eventRetryMillis = 2000
	// maxRecentEvents bounds ?recent=N.
	maxRecentEvents = 1000
)

// handleEvents streams cluster events as server-sent events: "id: N" and "data:
// {json}" per event. A Last-Event-ID header resumes after that event; when the
// window no longer holds what was missed, an "event: gap" record comes first and the
// client should reload its picture of the cluster; an "event: live" record follows the
// backlog. Without Last-Event-ID, ?recent=N
// starts with the N newest events. A client that falls too far behind is cut off
// (its bounded buffer filled); it reconnects and resumes.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) error {
	backlog, gap, sub, err := s.subscribeEvents(r)
	if err != nil {
		return err
	}
	defer sub.Cancel()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The connection may carry later requests: leave it without this stream's deadline.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	send := func(write func(io.Writer) error) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		return write(w) == nil && rc.Flush() == nil
	}
	if !send(func(w io.Writer) error { _, err := fmt.Fprintf(w, "retry: %d\n\n", eventRetryMillis); return err }) {
		return nil
	}
	if gap && !send(func(w io.Writer) error { _, err := io.WriteString(w, "event: gap\ndata: {}\n\n"); return err }) {
		return nil
	}
	for _, e := range backlog {
		if !send(eventRecord(e)) {
			return nil
		}
	}
	// "live" marks the end of the backlog: a client that only wanted the recent
	// events (meshctl events without --follow) stops here.
	if !send(func(w io.Writer) error { _, err := io.WriteString(w, "event: live\ndata: {}\n\n"); return err }) {
		return nil
	}
	beat := time.NewTicker(eventHeartbeat)
	defer beat.Stop()
	for {
		// A cut-off subscription ends the stream even while events wait in its buffer.
		select {
		case <-sub.Done():
			s.log.Debug("event stream ended", "remote", r.RemoteAddr, "err", sub.Err())
			return nil
		default:
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-s.closing:
			return nil
		case <-sub.Done():
			s.log.Debug("event stream ended", "remote", r.RemoteAddr, "err", sub.Err())
			return nil
		case <-beat.C:
			if !send(func(w io.Writer) error { _, err := io.WriteString(w, ": keep-alive\n\n"); return err }) {
				return nil
			}
		case e := <-sub.C():
			if !send(eventRecord(e)) {
				return nil
			}
		}
	}
}

// subscribeEvents subscribes as the request asks: after its Last-Event-ID, with
// the recent=N newest events, or from now on.
func (s *Server) subscribeEvents(r *http.Request) ([]events.Event, bool, *events.Subscription, error) {
	if v := strings.TrimSpace(r.Header.Get("Last-Event-ID")); v != "" {
		after, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, false, nil, fmt.Errorf("%w: Last-Event-ID %q is not an event id", ErrBadRequest, v)
		}
		backlog, gap, sub := s.cfg.Events.Subscribe(after)
		return backlog, gap, sub, nil
	}
	if v := r.URL.Query().Get("recent"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxRecentEvents {
			return nil, false, nil, fmt.Errorf("%w: recent=%q is not a count from 0 to %d", ErrBadRequest, v, maxRecentEvents)
		}
		backlog, sub := s.cfg.Events.SubscribeRecent(n)
		return backlog, false, sub, nil
	}
	backlog, gap, sub := s.cfg.Events.Subscribe(0)
	return backlog, gap, sub, nil
}

// eventRecord writes e as one SSE record.
func eventRecord(e events.Event) func(io.Writer) error {
	return func(w io.Writer) error {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "id: %d\ndata: %s\n\n", e.ID, b)
		return err
	}
}
