package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/internal/testports"
)

// kserveDouble is a KServe v2 endpoint for the load generator's own tests: it answers
// y = 2x for a float32 input x, in the encoding the request used, or the error status
// and code it is told to.
func kserveDouble(t *testing.T, status int, code string) (string, *atomic.Int64) {
	t.Helper()
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if status != http.StatusOK {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":"told to fail","code":%q}`, code)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		hl, _ := wire.ParseHeaderLength(r.Header.Get(wire.HeaderContentLength))
		req, err := wire.DecodeRequest(raw, hl)
		if err != nil || len(req.Inputs) != 1 {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":%q,"code":"bad_json"}`, fmt.Sprint(err))
			return
		}
		x, _ := req.Inputs[0].Float32s()
		for i := range x {
			x[i] *= 2
		}
		out := tensor.FromFloat32("y", req.Inputs[0].Shape, x)
		header, chunks, _ := wire.EncodeResponse(&wire.Response{ModelName: "double", Outputs: []tensor.Tensor{out}},
			func(string) bool { return hl > 0 })
		if len(chunks) > 0 {
			w.Header().Set(wire.HeaderContentLength, strconv.Itoa(len(header)))
		}
		_, _ = w.Write(header)
		for _, c := range chunks {
			_, _ = w.Write(c)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &calls
}

// deadAddr returns a loopback address nothing listens on: a port reserved below the
// ephemeral range, so that no listener elsewhere on the machine takes it meanwhile.
func deadAddr(t *testing.T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testports.Loopback(t, false)))
}

func doubleBody(binary bool) func(int) (InferBody, error) {
	return func(seq int) (InferBody, error) {
		x := tensor.FromFloat32("x", []int64{1, 3}, []float32{float32(seq), 1, -1})
		return EncodeInfer(&wire.Request{Inputs: []tensor.Tensor{x}, BinaryOutputs: binary}, binary)
	}
}

func checkDouble(seq int, resp *wire.Response) error {
	y, ok := resp.Output("y")
	if !ok {
		return errors.New("no output y")
	}
	got, err := y.Float32s()
	if err != nil {
		return err
	}
	want := []float32{2 * float32(seq), 2, -2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("y = %v, want %v", got, want)
	}
	return nil
}

func TestLoadRetriesAcrossEntryNodes(t *testing.T) {
	for _, binary := range []bool{false, true} {
		t.Run("binary="+strconv.FormatBool(binary), func(t *testing.T) {
			live, _ := kserveDouble(t, http.StatusOK, "")
			dead := deadAddr(t)
			base := LoadConfig{Targets: []string{live, dead}, Model: "double", Body: doubleBody(binary), Check: checkDouble,
				Concurrency: 4, Requests: 40, Deadline: 5 * time.Second}

			noRetry := base
			st, err := RunLoad(context.Background(), noRetry)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(st)
			if st.Requests != 40 || st.Successes != 20 || st.ByCode["0 transport"] != 20 {
				t.Fatalf("without retries: %v; want 20 ok and 20 transport failures (half start at the dead node)", st)
			}

			withRetry := base
			withRetry.Attempts = 2
			st, err = RunLoad(context.Background(), withRetry)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(st)
			if st.Successes != 40 || st.Retried != 20 || st.P50 <= 0 || st.P99 < st.P50 || st.Max < st.P99 {
				t.Fatalf("with a retry on the next node: %v; want 40 ok, 20 of them retried, ordered percentiles", st)
			}
			for i, o := range st.Outcomes {
				if o.Seq != i || (o.Attempts == 2) != (i%2 == 1) || o.Target != live {
					t.Fatalf("outcome %d: %+v", i, o)
				}
			}
		})
	}
}

func TestLoadDoesNotRetryInputErrors(t *testing.T) {
	bad, calls := kserveDouble(t, http.StatusBadRequest, "shape_mismatch")
	st, err := RunLoad(context.Background(), LoadConfig{Targets: []string{bad}, Model: "double", Body: doubleBody(false),
		Requests: 5, Attempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	if st.Failures != 5 || st.ByCode["400 shape_mismatch"] != 5 || calls.Load() != 5 {
		t.Fatalf("%v after %d calls; want 5 failures with code shape_mismatch, each tried once", st, calls.Load())
	}

	busy, busyCalls := kserveDouble(t, http.StatusServiceUnavailable, "no_replica")
	st, err = RunLoad(context.Background(), LoadConfig{Targets: []string{busy}, Model: "double", Body: doubleBody(false),
		Requests: 2, Attempts: 3, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st.ByCode["503 no_replica"] != 2 || busyCalls.Load() != 6 {
		t.Fatalf("%v after %d calls; want 2 failures with no_replica after 3 tries each", st, busyCalls.Load())
	}
}

func TestLoadBadAnswerAndTimeBound(t *testing.T) {
	live, _ := kserveDouble(t, http.StatusOK, "")
	wrong := func(int, *wire.Response) error { return errors.New("not what was expected") }
	st, err := RunLoad(context.Background(), LoadConfig{Targets: []string{live}, Model: "double", Body: doubleBody(false),
		Check: wrong, Requests: 3, Attempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	if st.ByCode["200 bad_answer"] != 3 {
		t.Fatalf("%v: want 3 bad answers, never retried", st)
	}

	start := time.Now()
	st, err = RunLoad(context.Background(), LoadConfig{Targets: []string{live}, Model: "double", Body: doubleBody(true),
		Check: checkDouble, Concurrency: 2, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 3*time.Second || st.Successes == 0 || st.Failures != 0 {
		t.Fatalf("time-bounded run took %v: %v", el, st)
	}
	st, err = RunLoad(context.Background(), LoadConfig{Targets: []string{live}, Model: "double", Body: doubleBody(false),
		Check: checkDouble, Duration: 300 * time.Millisecond, Pace: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st.Successes == 0 || st.Requests > 7 {
		t.Fatalf("paced run, one client, 50 ms apart for 300 ms: %v; want 1..7 requests", st)
	}
	if _, err := RunLoad(context.Background(), LoadConfig{Targets: []string{live}, Model: "double", Body: doubleBody(false)}); !errors.Is(err, ErrLoadConfig) {
		t.Fatalf("unbounded run: %v, want ErrLoadConfig", err)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0, 1}} {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestWriteResult(t *testing.T) {
	r := Result{Scenario: "harness-selftest", Trial: 1, FailoverMS: 12.5, Requests: 3, Passed: true}
	r.Notef("written by %s", t.Name())
	p1, err := WriteResult(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(p1) })
	p2, err := WriteResult(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(p2) })
	if p1 == p2 {
		t.Fatal("two results of the same instant share a file")
	}
	b, err := os.ReadFile(p1)
	if err != nil || !bytes.Contains(b, []byte(`"failover_ms": 12.5`)) || !bytes.Contains(b, []byte(`"scenario": "harness-selftest"`)) {
		t.Fatalf("result file %s: %v\n%s", p1, err, b)
	}
	if _, err := WriteResult(Result{Scenario: "../escape"}); !errors.Is(err, ErrResult) {
		t.Fatalf("scenario name with a path: %v, want ErrResult", err)
	}
}

// TestSteadyThroughput: completions one per 100 ms after a slow first one and before
// a slow last one; leaving out one at each end measures the steady 10 per second.
func TestSteadyThroughput(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var st LoadStats
	done := []time.Duration{900 * time.Millisecond} // ramp-up
	for i := 1; i <= 10; i++ {
		done = append(done, time.Second+time.Duration(i)*100*time.Millisecond)
	}
	done = append(done, 5*time.Second) // drain
	for i, d := range done {
		st.Outcomes = append(st.Outcomes, Outcome{Seq: i, Start: t0, Latency: d, Code: OutcomeOK})
	}
	st.Outcomes = append(st.Outcomes, Outcome{Seq: 99, Start: t0, Latency: 3 * time.Second, Code: OutcomeTransport})
	if got := st.SteadyThroughput(1); got < 9.999 || got > 10.001 {
		t.Fatalf("SteadyThroughput(1) = %v, want 10", got)
	}
	if got := st.SteadyThroughput(6); got != 0 {
		t.Fatalf("SteadyThroughput(6) with 12 answers = %v, want 0", got)
	}
}

func TestParseStageEntry(t *testing.T) {
	for in, want := range map[string]StageEntry{
		"gpt@1/stage2 (ready)":     {Model: "gpt", Version: "1", Stage: 2, Ready: true},
		"a@b@12/stage0 (loading)":  {Model: "a@b", Version: "12", Stage: 0},
		"gpt@1/stage99999 (ready)": {Model: "gpt", Version: "1", Stage: 99999, Ready: true},
	} {
		if got, ok := ParseStageEntry(in); !ok || got != want {
			t.Errorf("ParseStageEntry(%q) = %+v, %v; want %+v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "gpt@1/stage2", "gpt/stage2 (ready)", "gpt@x/stage2 (ready)", "gpt@1/stage2 (gone)"} {
		if got, ok := ParseStageEntry(in); ok {
			t.Errorf("ParseStageEntry(%q) = %+v, accepted", in, got)
		}
	}
}
