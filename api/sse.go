package api

import (
	"encoding/json"
	"net/http"
)

// sseStream writes server-sent events. Headers go out with the first event, so an
// error found before any output still gets a plain JSON error with its status.
type sseStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func newSSEStream(w http.ResponseWriter) *sseStream {
	return &sseStream{w: w, rc: http.NewResponseController(w)}
}

// send writes v as one `data:` event and flushes it, so each token reaches the
// client as it is made. An error means the client is gone.
func (s *sseStream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.sendRaw(b)
}

func (s *sseStream) sendRaw(data []byte) error {
	if !s.started {
		h := s.w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		// Proxies such as nginx buffer responses unless told not to.
		h.Set("X-Accel-Buffering", "no")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	buf := make([]byte, 0, len(data)+8)
	buf = append(buf, "data: "...)
	buf = append(buf, data...)
	buf = append(buf, "\n\n"...)
	if _, err := s.w.Write(buf); err != nil {
		return err
	}
	return s.rc.Flush()
}
