package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/layermesh/layermesh/api/wire"
)

// ErrLoadConfig is returned for a load configuration that cannot run.
var ErrLoadConfig = errors.New("harness: bad load configuration")

// Outcome codes that are not the server's own error codes.
const (
	OutcomeOK        = "ok"
	OutcomeTransport = "transport"  // no HTTP answer: refused, reset, timed out
	OutcomeDeadline  = "deadline"   // the request's deadline passed across all its tries
	OutcomeBadAnswer = "bad_answer" // a 200 whose body does not decode or fails Check
)

// InferBody is a ready-to-send KServe v2 infer request body.
type InferBody struct {
	Body []byte
	// HeaderLen is the JSON part's length when the body carries the binary tensor
	// extension (sent as Inference-Header-Content-Length); 0 for pure JSON.
	HeaderLen int
}

// EncodeInfer builds the body for req, with its inputs as JSON data or, when binary,
// in the binary part.
func EncodeInfer(req *wire.Request, binary bool) (InferBody, error) {
	header, chunks, err := wire.EncodeRequest(req, binary)
	if err != nil {
		return InferBody{}, err
	}
	if len(chunks) == 0 {
		return InferBody{Body: header}, nil
	}
	body := slices.Concat(append([][]byte{header}, chunks...)...)
	return InferBody{Body: body, HeaderLen: len(header)}, nil
}

// LoadConfig describes a load run: Concurrency clients send infer requests to the
// entry nodes until Requests have been sent or Duration has passed, whichever first.
type LoadConfig struct {
	// Targets are the entry nodes' host:port HTTP addresses.
	Targets []string
	// Model and Version (optional) name the model to infer.
	Model   string
	Version string
	// Body returns the body of request seq.
	Body func(seq int) (InferBody, error)
	// Check, when set, validates a decoded 200 answer to request seq. resp's tensors
	// alias the client's answer buffer, which its next request reuses: Check must not
	// keep them past its return.
	Check func(seq int, resp *wire.Response) error
	// Concurrency is the number of clients; default 1.
	Concurrency int
	// Requests bounds the count (0: no count bound); Duration bounds the time (0: no
	// time bound). At least one must be set.
	Requests int
	Duration time.Duration
	// Deadline bounds one request across all its tries; default 30 s.
	Deadline time.Duration
	// Attempts is how many tries a request gets, each on the next entry node, as a real
	// client with a list of nodes does; default 1 (no retry).
	Attempts int
	// Retryable says which answers are worth another try; default: no HTTP answer, 429,
	// 502, 503 and 504. 4xx input errors are never worth it. An answer cut off in its
	// body is always tried again, whatever its status.
	Retryable func(status int) bool
	// Backoff is the pause between tries when the answer has no Retry-After; default
	// 50 ms. A Retry-After is honoured within the deadline.
	Backoff time.Duration
	// Pace, when set, is the pause each client takes between its requests, for a steady
	// background stream that leaves the machine's cores to the system under test.
	Pace time.Duration
	// Token, when set, is sent as a bearer token.
	Token string
	// Client sends the requests; default a client with keep-alive connections.
	Client *http.Client
}

// Outcome is what happened to one request.
type Outcome struct {
	Seq      int
	Start    time.Time
	Latency  time.Duration
	Attempts int
	// Target is the entry node of the last try.
	Target string
	// Status is the HTTP status of the last try (0: no answer).
	Status int
	// Code is OutcomeOK, the server's error code, or another Outcome* constant.
	Code string
	Err  string
}

// OK reports whether the request succeeded.
func (o Outcome) OK() bool { return o.Code == OutcomeOK }

// LoadStats summarises a load run.
type LoadStats struct {
	Requests  int
	Successes int
	Failures  int
	// ByCode counts failures by "<status> <code>" ("0 transport" for no answer).
	ByCode map[string]int
	// Retried counts successes that needed more than one try.
	Retried int
	// P50, P99 and Max are latencies of the successes, retries included.
	P50, P99, Max time.Duration
	Elapsed       time.Duration
	// Outcomes lists every request in the order they were sent.
	Outcomes []Outcome
}

// Throughput returns successes per second.
func (s *LoadStats) Throughput() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Successes) / s.Elapsed.Seconds()
}

// SteadyThroughput is the successes per second between the completion of the skip-th
// answer and that of the skip-th from last, leaving out the run's ramp-up (a pipeline
// filling) and its drain (the last requests finding stages idle). With skip set to the
// concurrency it measures what a closed loop sustains. It is 0 when fewer than
// 2*skip+2 requests succeeded.
func (s *LoadStats) SteadyThroughput(skip int) float64 {
	n, span := s.SteadyWindow(skip)
	if n == 0 {
		return 0
	}
	return float64(n) / span.Seconds()
}

// SteadyWindow is SteadyThroughput's answers and time span: n answers completed in
// span after the skip-th completion, up to the skip-th from last; 0 and 0 when
// fewer than 2*skip+2 requests succeeded.
func (s *LoadStats) SteadyWindow(skip int) (n int, span time.Duration) {
	var done []time.Time
	for _, o := range s.Outcomes {
		if o.OK() {
			done = append(done, o.Start.Add(o.Latency))
		}
	}
	if skip < 0 || len(done) < 2*skip+2 {
		return 0, 0
	}
	slices.SortFunc(done, func(a, b time.Time) int { return a.Compare(b) })
	first, last := done[skip], done[len(done)-1-skip]
	if !last.After(first) {
		return 0, 0
	}
	return len(done) - 1 - 2*skip, last.Sub(first)
}

// String is a one-line summary for test logs.
func (s *LoadStats) String() string {
	return fmt.Sprintf("%d requests: %d ok (%d after retry), %d failed %v; p50 %v p99 %v max %v; %.1f/s",
		s.Requests, s.Successes, s.Retried, s.Failures, s.ByCode, s.P50, s.P99, s.Max, s.Throughput())
}

func defaultRetryable(status int) bool {
	switch status {
	case 0, http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// RunLoad runs the load and returns its statistics. It stops early when ctx ends; the
// requests already sent finish (each within its deadline).
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadStats, error) {
	if len(cfg.Targets) == 0 || cfg.Model == "" || cfg.Body == nil {
		return nil, fmt.Errorf("%w: targets, model and body are required", ErrLoadConfig)
	}
	if cfg.Requests <= 0 && cfg.Duration <= 0 {
		return nil, fmt.Errorf("%w: neither a request count nor a duration bounds the run", ErrLoadConfig)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = 30 * time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 1
	}
	if cfg.Retryable == nil {
		cfg.Retryable = defaultRetryable
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 50 * time.Millisecond
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Concurrency}}
		// Its connections are this run's alone: leave none open behind it.
		defer cfg.Client.CloseIdleConnections()
	}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	var (
		mu       sync.Mutex
		next     int
		outcomes []Outcome
	)
	// take hands out the next sequence number, or false when the run is over.
	take := func() (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil || (cfg.Requests > 0 && next >= cfg.Requests) {
			return 0, false
		}
		next++
		return next - 1, true
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each client reads its answers into one buffer it keeps, as a serving
			// client would: a fresh 25 MB buffer per answer costs the load generator
			// page faults and copies that steal CPU from the nodes sharing its cores.
			var buf []byte
			for {
				seq, ok := take()
				if !ok {
					return
				}
				// A request in flight when the run's time is up still gets its whole
				// deadline: cutting it short would count the harness's stop as a failure.
				o := sendOne(context.WithoutCancel(ctx), &cfg, seq, &buf)
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
				if cfg.Pace > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(cfg.Pace):
					}
				}
			}
		}()
	}
	wg.Wait()
	return summarise(outcomes, time.Since(start)), nil
}

// sendOne sends request seq, first to entry node seq mod n, and on a retryable answer
// to the next one, until it succeeds, runs out of tries, or its deadline passes.
func sendOne(ctx context.Context, cfg *LoadConfig, seq int, buf *[]byte) (o Outcome) {
	o = Outcome{Seq: seq, Start: time.Now()}
	defer func() { o.Latency = time.Since(o.Start) }()
	body, err := cfg.Body(seq)
	if err != nil {
		o.Code, o.Err = OutcomeBadAnswer, fmt.Sprintf("building the body: %v", err)
		return o
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Deadline)
	defer cancel()
	for attempt := 0; attempt < cfg.Attempts; attempt++ {
		o.Attempts = attempt + 1
		o.Target = cfg.Targets[(seq+attempt)%len(cfg.Targets)]
		var wait time.Duration
		o.Status, o.Code, o.Err, wait = tryOnce(ctx, cfg, seq, o.Target, body, buf)
		// A transport error is no answer, whatever status came first: a node killed
		// while it writes a 200 leaves a truncated body, which a client sends again.
		retry := o.Code == OutcomeTransport || cfg.Retryable(o.Status)
		if o.Code == OutcomeOK || o.Code == OutcomeBadAnswer || !retry {
			return o
		}
		if wait <= 0 {
			wait = cfg.Backoff
		}
		select {
		case <-ctx.Done():
			o.Code, o.Err = OutcomeDeadline, fmt.Sprintf("after %d tries, last: %s", o.Attempts, o.Err)
			return o
		case <-time.After(wait):
		}
	}
	return o
}

// tryOnce sends one try and classifies the answer; wait is the server's Retry-After.
func tryOnce(ctx context.Context, cfg *LoadConfig, seq int, target string, body InferBody, buf *[]byte) (status int, code, msg string, wait time.Duration) {
	path := "/v2/models/" + url.PathEscape(cfg.Model)
	if cfg.Version != "" {
		path += "/versions/" + url.PathEscape(cfg.Version)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+target+path+"/infer", bytes.NewReader(body.Body))
	if err != nil {
		return 0, OutcomeBadAnswer, err.Error(), 0
	}
	if body.HeaderLen > 0 {
		req.Header.Set("Content-Type", wire.ContentTypeBinary)
		req.Header.Set(wire.HeaderContentLength, strconv.Itoa(body.HeaderLen))
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	if cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	resp, err := cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, OutcomeDeadline, err.Error(), 0
		}
		return 0, OutcomeTransport, err.Error(), 0
	}
	defer resp.Body.Close()
	raw, err := readAnswer(resp, buf)
	if err != nil {
		return resp.StatusCode, OutcomeTransport, fmt.Sprintf("reading the answer: %v", err), 0
	}
	if resp.StatusCode != http.StatusOK {
		var eb wire.ErrorBody
		code = "http_" + strconv.Itoa(resp.StatusCode)
		if json.Unmarshal(raw, &eb) == nil && eb.Code != "" {
			code = eb.Code
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		return resp.StatusCode, code, eb.Error, wait
	}
	headerLen, err := wire.ParseHeaderLength(resp.Header.Get(wire.HeaderContentLength))
	if err != nil {
		return resp.StatusCode, OutcomeBadAnswer, err.Error(), 0
	}
	decoded, err := wire.DecodeResponse(raw, headerLen)
	if err != nil {
		return resp.StatusCode, OutcomeBadAnswer, err.Error(), 0
	}
	if cfg.Check != nil {
		if err := cfg.Check(seq, decoded); err != nil {
			return resp.StatusCode, OutcomeBadAnswer, err.Error(), 0
		}
	}
	return resp.StatusCode, OutcomeOK, "", 0
}

// maxAnswerBytes bounds the buffer an answer's Content-Length may ask for.
const maxAnswerBytes = 1 << 31

// readAnswer reads resp's body into *buf, grown to the declared Content-Length when
// there is one, and returns the bytes read.
func readAnswer(resp *http.Response, buf *[]byte) ([]byte, error) {
	n := resp.ContentLength
	if n < 0 || n > maxAnswerBytes {
		return io.ReadAll(resp.Body)
	}
	if int64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		return nil, err
	}
	return b, nil
}

func summarise(outcomes []Outcome, elapsed time.Duration) *LoadStats {
	slices.SortFunc(outcomes, func(a, b Outcome) int { return a.Seq - b.Seq })
	s := &LoadStats{Requests: len(outcomes), ByCode: make(map[string]int), Elapsed: elapsed, Outcomes: outcomes}
	var lat []time.Duration
	for _, o := range outcomes {
		if o.OK() {
			s.Successes++
			lat = append(lat, o.Latency)
			if o.Attempts > 1 {
				s.Retried++
			}
			continue
		}
		s.Failures++
		s.ByCode[fmt.Sprintf("%d %s", o.Status, o.Code)]++
	}
	slices.Sort(lat)
	s.P50, s.P99 = Percentile(lat, 50), Percentile(lat, 99)
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	return s
}

// Percentile returns the p-th percentile (nearest rank) of sorted durations, 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}
