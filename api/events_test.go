package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/events"
)

// eventServer runs the API in front of a real single node with the given bus, and
// returns its base URL and admin token.
func eventServer(t *testing.T, bus *events.Bus) (string, string) {
	t.Helper()
	n := startNode(t)
	srv, err := api.New(api.Config{
		Models: n.Node, Health: n.Node, Cluster: n.Node, Tokens: scopedNode{n.Node},
		Events: bus, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.HTTPServer(nil)
	ln := mustListen(t)
	go hs.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown with event streams open: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), n.token
}

// sseRecord is one parsed server-sent event.
type sseRecord struct {
	id, event string
	data      events.Event
}

// sseStream reads records from an event stream.
type sseStream struct {
	resp *http.Response
	r    *bufio.Reader
}

func openEvents(t *testing.T, base, path, token string, hdr map[string]string) *sseStream {
	t.Helper()
	req, err := http.NewRequest("GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return &sseStream{resp: resp, r: bufio.NewReader(resp.Body)}
}

// next returns the next record with data or an event name (retry and comments are
// skipped); io.EOF when the stream ended.
func (s *sseStream) next(t *testing.T) (sseRecord, error) {
	t.Helper()
	var rec sseRecord
	var data string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return rec, err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if data == "" && rec.event == "" || rec.event == "live" {
				rec = sseRecord{}
				data = ""
				continue // retry:, a comment, or the end of the backlog
			}
			if rec.event == "" && data != "" {
				if err := json.Unmarshal([]byte(data), &rec.data); err != nil {
					t.Fatalf("event data %q: %v", data, err)
				}
			}
			return rec, nil
		case strings.HasPrefix(line, "id: "):
			rec.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			rec.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		}
	}
}

func (s *sseStream) expectIDs(t *testing.T, ids ...uint64) {
	t.Helper()
	for _, want := range ids {
		rec, err := s.next(t)
		if err != nil {
			t.Fatalf("reading event %d: %v", want, err)
		}
		if rec.event != "" || rec.data.ID != want || rec.id != fmt.Sprint(want) {
			t.Fatalf("got record %+v, want event id %d", rec, want)
		}
	}
}

func TestEventStreamDeliversInOrderAndResumesAfterLastEventID(t *testing.T) {
	bus := events.NewBus(8, 64)
	base, token := eventServer(t, bus)
	for i := range 3 {
		bus.Publish(events.Event{Type: events.Drain, Subject: fmt.Sprintf("n%d", i), Node: fmt.Sprintf("n%d", i)})
	}

	s := openEvents(t, base, "/v1/events", token, map[string]string{"Last-Event-ID": "1"})
	s.expectIDs(t, 2, 3)
	bus.Publish(events.Event{Type: events.Placement, Subject: "m@1", Epoch: 7,
		Moved: []events.StageMove{{Stage: 0, Added: []string{"b"}, Removed: []string{"a"}}}})
	rec, err := s.next(t)
	if err != nil {
		t.Fatal(err)
	}
	if rec.data.ID != 4 || rec.data.Type != events.Placement || rec.data.Epoch != 7 || len(rec.data.Moved) != 1 ||
		rec.data.Moved[0].Added[0] != "b" || rec.data.Time.IsZero() {
		t.Fatalf("live event = %+v, want the placement with id 4", rec.data)
	}

	recent := openEvents(t, base, "/v1/events?recent=2", token, nil)
	recent.expectIDs(t, 3, 4)

	// An id the bus never gave out: a gap record, then the whole window.
	gap := openEvents(t, base, "/v1/events", token, map[string]string{"Last-Event-ID": "9999"})
	if rec, err := gap.next(t); err != nil || rec.event != "gap" {
		t.Fatalf("first record after an unknown id = %+v, %v; want event: gap", rec, err)
	}
	gap.expectIDs(t, 1, 2, 3, 4)
}

func TestEventStreamRefusesWithoutAdminTokenAndBadResumeIDs(t *testing.T) {
	bus := events.NewBus(8, 8)
	base, token := eventServer(t, bus)
	for _, r := range []struct {
		path, token, lastID string
		status              int
		code                api.Code
	}{
		{"/v1/events", "", "", 401, api.CodeUnauthorized},
		{"/v1/events", "wrong", "", 401, api.CodeUnauthorized},
		{"/v1/events", "infer-only", "", 403, api.CodeForbidden},
		{"/v1/events", token, "abc", 400, api.CodeBadRequest},
		{"/v1/events?recent=-1", token, "", 400, api.CodeBadRequest},
		{"/v1/links", "", "", 401, api.CodeUnauthorized},
		{"/v1/links", token, "", 501, api.CodeNotClusterMode},
		{"/v1/stage-stats", "", "", 401, api.CodeUnauthorized},
		{"/v1/stage-stats", token, "", 501, api.CodeNotClusterMode},
	} {
		req, _ := http.NewRequest("GET", base+r.path, nil)
		if r.token != "" {
			req.Header.Set("Authorization", "Bearer "+r.token)
		}
		if r.lastID != "" {
			req.Header.Set("Last-Event-ID", r.lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Code api.Code }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != r.status || body.Code != r.code {
			t.Errorf("GET %s token %q: %d %q, want %d %q", r.path, r.token, resp.StatusCode, body.Code, r.status, r.code)
		}
	}
	if n := bus.Subscribers(); n != 0 {
		t.Fatalf("refused requests left %d subscriptions", n)
	}
}

// TestEventStreamCutsOffAClientThatStopsReading: a client that reads nothing fills
// the socket buffers, then its bounded bus buffer; the bus drops it at once instead
// of queueing for it, and the stream ends once the handler's write returns.
func TestEventStreamCutsOffAClientThatStopsReading(t *testing.T) {
	bus := events.NewBus(16, 8)
	base, token := eventServer(t, bus)
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", token)
	deadline := time.Now().Add(30 * time.Second)
	for bus.Subscribers() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the stream never subscribed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	const published = 20000 // 20 MB of events: more than any socket buffer holds
	detail := strings.Repeat("x", 1000)
	for i := range published {
		bus.Publish(events.Event{Type: events.StageReady, Subject: fmt.Sprint(i), Detail: detail})
	}
	if n := bus.Subscribers(); n != 0 {
		t.Fatalf("after %d unread events the bus still holds %d subscribers", published, n)
	}
	// Now read: the stream must end (the handler returns) well short of everything.
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &sseStream{resp: resp, r: bufio.NewReader(resp.Body)}
	got, last := 0, uint64(0)
	for {
		rec, err := s.next(t)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d events: %v", got, err)
		}
		if rec.data.ID != last+1 {
			t.Fatalf("event id %d after %d: the stream skipped events instead of ending", rec.data.ID, last)
		}
		last = rec.data.ID
		got++
	}
	if got >= published {
		t.Fatalf("a client that stopped reading got all %d events", got)
	}
	t.Logf("the slow client got %d of %d events before it was cut off", got, published)
}

// TestDashboardIsServedWithoutDataAndOnlyFromItsOwnOrigin: /ui is open, but it is
// only the embedded page (a login form); every figure it shows comes from admin
// routes with the token, and its CSP forbids other origins and inline script.
func TestDashboardIsServedWithoutDataAndOnlyFromItsOwnOrigin(t *testing.T) {
	n := startNode(t)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(n.url + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("GET /ui: %d to %q, want a redirect to /ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, r := range []struct{ path, contentType, contains string }{
		{"/ui/", "text/html", `<form id="login-form"`},
		{"/ui/app.js", "text/javascript", "sessionStorage"},
		{"/ui/style.css", "text/css", "prefers-color-scheme"},
	} {
		status, hdr, body := n.do(t, "GET", r.path, "", nil, nil)
		if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), r.contentType) || !strings.Contains(string(body), r.contains) {
			t.Errorf("GET %s: %d %s, want 200 %s containing %q", r.path, status, hdr.Get("Content-Type"), r.contentType, r.contains)
		}
		csp := hdr.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("GET %s: CSP %q does not keep the page to its own origin", r.path, csp)
		}
		if strings.Contains(string(body), "test-node") {
			t.Errorf("GET %s without a token shows the node's name", r.path)
		}
	}
	for _, ref := range []string{"http://", "https://", "//fonts", "cdn"} {
		_, _, body := n.do(t, "GET", "/ui/", "", nil, nil)
		_, _, js := n.do(t, "GET", "/ui/app.js", "", nil, nil)
		_, _, css := n.do(t, "GET", "/ui/style.css", "", nil, nil)
		all := strings.ReplaceAll(string(body)+string(js)+string(css), "http://www.w3.org/2000/svg", "")
		if strings.Contains(all, ref) {
			t.Errorf("the dashboard refers to %q: an offline site cannot load it", ref)
		}
	}
	if status, _, _ := n.do(t, "GET", "/ui/nope.js", "", nil, nil); status != 404 {
		t.Errorf("GET /ui/nope.js: %d, want 404", status)
	}
}
