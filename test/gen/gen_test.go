package gen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/events"
	"github.com/layermesh/layermesh/pipeline"
	"github.com/layermesh/layermesh/test/harness"
	"github.com/layermesh/layermesh/tokenizer"
)

const model = "gen"

// mesh is the 3-node cluster with the model deployed.
type mesh struct {
	*harness.Cluster
	t         *testing.T
	token     string
	tokenFile string
	meshctl   string
}

// startMesh starts 3 meshnode processes and deploys the model through meshctl with
// the GPT-2 tokenizer in 3 stages x 2 replicas, waiting for every replica.
func startMesh(t *testing.T, path string) *mesh {
	t.Helper()
	meshctl := harness.BuildBinary(t, "./cmd/meshctl")
	c := harness.StartCluster(t, 3, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, node *harness.Node) []string {
			return append(c.DefaultFlags(node), "--gossip-port", "0", "--threads", "1", "--mem-budget", "1GiB")
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{Cluster: c, t: t, token: token, tokenFile: filepath.Join(c.Node(0).DataDir, harness.AdminTokenFile), meshctl: meshctl}
	harness.Eventually(t, 60*time.Second, 200*time.Millisecond, func() error { return c.AliveEverywhere(token, 3) })
	if out, err := m.ctl(1, "deploy", path, "--name", model, "--stages", "3", "--replicas", "2",
		"--tokenizer", gpt2Dir(t), "--wait", "2m", "--quiet"); err != nil {
		t.Fatalf("meshctl deploy --tokenizer: %v\n%s", err, out)
	}
	harness.Eventually(t, 90*time.Second, 200*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		counts, stages, err := harness.ReadyReplicas(ctx, m.client(0), model)
		if err != nil {
			return err
		}
		for k := range stages {
			if counts[k] != 2 {
				return fmt.Errorf("ready replicas per stage %v", counts)
			}
		}
		if stages != 3 {
			return fmt.Errorf("%d stages", stages)
		}
		return nil
	})
	return m
}

func (m *mesh) client(i int) *client.Client {
	cl, err := client.New(m.HTTPAddr(i), client.WithToken(m.token))
	if err != nil {
		m.t.Fatal(err)
	}
	return cl
}

// ctl runs meshctl against node i and returns its standard output.
func (m *mesh) ctl(i int, args ...string) (string, error) {
	args = append(args, "--addr", m.HTTPAddr(i), "--token-file", m.tokenFile)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.meshctl, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("meshctl %v: %w: %s", args[0], err, stderr.String())
	}
	return string(out), nil
}

// TestGenerationAcrossMeshnodes: a with-past GPT with the GPT-2 tokenizer in 3 stages
// x 2 replicas on 3 meshnode processes. A streamed OpenAI completion gives exactly
// the text of one ORT session of the whole model in a plain loop; meshctl generate
// gives the same text as the same OpenAI request; a chat completion answers the
// default template's rendering; and a 200-token stream that loses a stage holder of
// its session to SIGKILL completes with exactly the undisturbed run's text, the
// replay counted in /metrics and published on /v1/events.
func TestGenerationAcrossMeshnodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 meshnode processes; skipped in -short")
	}
	path := writeModel(t)
	ref := newReference(t, path)
	m := startMesh(t, path)
	checkStreamedCompletion(t, m, ref)
	checkMeshctlGenerate(t, m)
	checkChatCompletion(t, m, ref)
	checkStreamSurvivesStageHolderKill(t, m, ref)
}

// checkStreamedCompletion: greedy, streamed through /openai/v1/completions via node 1.
func checkStreamedCompletion(t *testing.T, m *mesh, ref *reference) {
	const prompt = "The quick brown fox"
	ids := ref.tok.Encode(prompt)
	want := ref.generate(ids, 40, pipeline.Sampling{})
	got, err := streamCompletion(m.URL(1, "/openai/v1/completions"), m.token, map[string]any{
		"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0, "stream": true,
		"stream_options": map[string]any{"include_usage": true},
	}, nil)
	if err != nil {
		t.Fatalf("streamed completion: %v", err)
	}
	if !sameText(got.text, ref.text(want)) || got.usage.CompletionTokens != len(want) || got.usage.PromptTokens != len(ids) ||
		got.usage.TotalTokens != len(ids)+len(want) {
		t.Fatalf("streamed completion: %q (%+v), want the whole model's %q (%d tokens after %d)", got.text, got.usage, ref.text(want), len(want), len(ids))
	}
	if (len(want) == 40) != (got.finish == "length") {
		t.Fatalf("finish reason %q after %d tokens", got.finish, len(want))
	}
	t.Logf("streamed completion in %d chunks, %d tokens, finish %s, equal to the whole model: %q", got.pieces, got.usage.CompletionTokens, got.finish, got.text)
}

// checkMeshctlGenerate: meshctl generate --json prints one event per line; its text
// equals the same request's OpenAI answer.
func checkMeshctlGenerate(t *testing.T, m *mesh) {
	const prompt = "Once upon a time"
	out, err := m.ctl(2, "generate", model, prompt, "--max-tokens", "30", "--seed", "7", "--temperature", "0.7", "--top-k", "40", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var text strings.Builder
	var last map[string]any
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("meshctl generate --json line %q: %v", line, err)
		}
		s, _ := ev["text_output"].(string)
		text.WriteString(s)
		last, lines = ev, lines+1
	}
	resp, err := postJSON(m.URL(0, "/openai/v1/completions"), m.token, map[string]any{
		"model": model, "prompt": prompt, "max_tokens": 30, "seed": 7, "temperature": 0.7, "top_k": 40,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var whole struct {
		Object  string `json:"object"`
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&whole); err != nil || resp.StatusCode != http.StatusOK || len(whole.Choices) != 1 {
		t.Fatalf("OpenAI completion: %s %v %+v", resp.Status, err, whole)
	}
	if !sameText(text.String(), whole.Choices[0].Text) || last["finish_reason"] != whole.Choices[0].FinishReason ||
		last["completion_tokens"] != float64(whole.Usage.CompletionTokens) || whole.Object != "text_completion" {
		t.Fatalf("meshctl generate: %q (last event %v); OpenAI: %q (%s, %+v)", text.String(), last, whole.Choices[0].Text, whole.Choices[0].FinishReason, whole.Usage)
	}
	t.Logf("meshctl generate: %d events, %v tokens, text equal to the OpenAI answer: %q", lines, last["completion_tokens"], text.String())
}

// checkChatCompletion: a chat with a system and a user message answers what the
// whole model generates after the default template's rendering of them.
func checkChatCompletion(t *testing.T, m *mesh, ref *reference) {
	msgs := []tokenizer.ChatMessage{{Role: "system", Content: "You are terse."}, {Role: "user", Content: "Name a colour."}}
	eos, _, _ := ref.tok.EOS()
	rendered, err := tokenizer.DefaultChatTemplate.Render(msgs, eos)
	if err != nil {
		t.Fatal(err)
	}
	want := ref.generate(ref.tok.Encode(rendered), 20, pipeline.Sampling{})
	var in []map[string]string
	for _, msg := range msgs {
		in = append(in, map[string]string{"role": msg.Role, "content": msg.Content})
	}
	resp, err := postJSON(m.URL(2, "/openai/v1/chat/completions"), m.token, map[string]any{
		"model": model, "messages": in, "max_tokens": 20, "temperature": 0,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var chat struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Choices []struct {
			Message struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&chat); err != nil || resp.StatusCode != http.StatusOK || len(chat.Choices) != 1 {
		t.Fatalf("chat completion: %s %v %+v", resp.Status, err, chat)
	}
	c := chat.Choices[0]
	if chat.Object != "chat.completion" || !strings.HasPrefix(chat.ID, "chatcmpl-") || c.Message.Role != "assistant" ||
		!sameText(c.Message.Content, ref.text(want)) || chat.Usage.CompletionTokens != len(want) {
		t.Fatalf("chat completion %+v, want content %q (%d tokens)", chat, ref.text(want), len(want))
	}
	t.Logf("chat completion (%d prompt tokens after the default template): %q", chat.Usage.PromptTokens, c.Message.Content)
}

// checkStreamSurvivesStageHolderKill: a seeded 200-token stream through node 0; after
// its 60th chunk the node other than node 0 that holds the session's state is killed
// with SIGKILL. The stream completes with exactly the undisturbed run's text.
func checkStreamSurvivesStageHolderKill(t *testing.T, m *mesh, ref *reference) {
	const prompt = "In a hole in the ground there lived"
	body := map[string]any{"model": model, "prompt": prompt, "max_tokens": 200, "temperature": 0.8, "top_k": 50, "seed": 9,
		"stream": true, "stream_options": map[string]any{"include_usage": true}}
	url := m.URL(0, "/openai/v1/completions")
	want := ref.generate(ref.tok.Encode(prompt), 200, pipeline.Sampling{Temperature: 0.8, TopK: 50, Seed: 9})
	undisturbed, err := streamCompletion(url, m.token, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !sameText(undisturbed.text, ref.text(want)) || undisturbed.usage.CompletionTokens != len(want) {
		t.Fatalf("undisturbed seeded stream %q (%+v) differs from the whole model's %q", undisturbed.text, undisturbed.usage, ref.text(want))
	}
	if len(want) < 100 {
		t.Fatalf("the seeded run ends after %d tokens: too short to kill a node in", len(want))
	}
	waitNoSessions(t, m)
	victim, held := -1, 0
	var killedAt time.Time
	var arrivals []time.Time
	got, err := streamCompletion(url, m.token, body, func(i int, at time.Time) {
		arrivals = append(arrivals, at)
		if i == 60 {
			victim, held, killedAt = killSessionHolder(t, m)
		}
	})
	if err != nil {
		t.Fatalf("the stream across the kill: %v", err)
	}
	if victim < 0 {
		t.Fatal("the kill never happened")
	}
	same := got.text == undisturbed.text && got.usage == undisturbed.usage && got.finish == undisturbed.finish
	replays, metricErr := harness.Metric(context.Background(), m.HTTPAddr(0), "layermesh_session_replays_total")
	stall := logStall(t, arrivals, killedAt)
	res := harness.Result{Scenario: "generation-stage-holder-kill", Requests: 1, FailoverMS: ms(stall),
		Started: arrivals[0], Finished: time.Now(), Passed: same && metricErr == nil && replays >= 1}
	if !same {
		res.ClientErrors = 1
	}
	res.Notef("killed node %d (%s), holding %d of the session's stages, after 60 of 200 streamed chunks; session replays %v; stall %.0f ms",
		victim, m.Node(victim).Name, held, replays, ms(stall))
	harness.RecordResult(t, res)
	if !same {
		t.Fatalf("the stream across the kill differs from the undisturbed run:\n got %q (%+v)\nwant %q (%+v)", got.text, got.usage, undisturbed.text, undisturbed.usage)
	}
	// One replay re-pins every stage the dead node held, however many; a stage call
	// that a stalled machine timed out later would replay again, which the stream
	// survives just the same.
	if metricErr != nil || replays < 1 {
		t.Fatalf("layermesh_session_replays_total on the entry node: %v, %v; want at least 1 (the kill hit %d of the session's stages)", replays, metricErr, held)
	}
	checkReplayEvents(t, m, m.Node(victim).Name, held)
}

// waitNoSessions waits until no node holds session state (the last generation's
// sessions are closed), so that the state seen next belongs to the next session.
func waitNoSessions(t *testing.T, m *mesh) {
	harness.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			if n, err := harness.Metric(context.Background(), m.HTTPAddr(i), "layermesh_sessions_active"); err != nil || n != 0 {
				return fmt.Errorf("node %d: %v sessions (%v)", i, n, err)
			}
		}
		return nil
	})
}

// killSessionHolder kills (SIGKILL) a node other than the entry (node 0) that holds
// the running session's state, as its /metrics says; it returns the node, how many of
// the session's stages it held, and when it was killed.
func killSessionHolder(t *testing.T, m *mesh) (int, int, time.Time) {
	for i := 1; i < 3; i++ {
		n, err := harness.Metric(context.Background(), m.HTTPAddr(i), "layermesh_sessions_active")
		if err != nil || n == 0 {
			continue
		}
		if err := m.Kill(i); err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		t.Logf("killed node %d (%s), which holds %v of the session's stages, after the 60th chunk", i, m.Node(i).Name, n)
		return i, int(n), at
	}
	t.Fatal("neither node 1 nor node 2 holds the session's state")
	return -1, 0, time.Time{}
}

// logStall logs the failover as the benchmark report reads it: the longest wait for
// a token from the kill on (the kill counting as the wait's start), the wait from the
// kill to the first token after it, and the usual gap between tokens.
func logStall(t *testing.T, arrivals []time.Time, killedAt time.Time) time.Duration {
	var gaps []time.Duration
	stall, first := time.Duration(0), time.Duration(-1)
	for i := 1; i < len(arrivals); i++ {
		at := arrivals[i]
		if at.Before(killedAt) {
			gaps = append(gaps, at.Sub(arrivals[i-1]))
			continue
		}
		from := arrivals[i-1]
		if from.Before(killedAt) {
			from = killedAt
			first = at.Sub(killedAt)
		}
		stall = max(stall, at.Sub(from))
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	usual := time.Duration(0)
	if len(gaps) > 0 {
		usual = gaps[len(gaps)/2]
	}
	t.Logf("generation failover: stall %.0f ms (longest wait for a token after the kill; kill to the next token %.0f ms; usual gap between tokens %.1f ms)",
		ms(stall), ms(first), float64(usual.Microseconds())/1000)
	return stall
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// checkReplayEvents: the entry node's /v1/events holds a session_replay event from
// the killed node for each of the session's stages it held.
func checkReplayEvents(t *testing.T, m *mesh, victim string, held int) {
	req, err := http.NewRequest(http.MethodGet, m.URL(0, "/v1/events?recent=1000"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+m.token)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var replays []events.Event
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "event: live" {
			break
		}
		var e events.Event
		if data, ok := strings.CutPrefix(line, "data: "); ok && json.Unmarshal([]byte(data), &e) == nil && e.Type == events.SessionReplay {
			replays = append(replays, e)
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	moved, fromVictim := 0, 0
	for _, e := range replays {
		if e.From == victim {
			fromVictim++
		}
		if e.From == victim && e.To != "" && e.To != victim && e.Model == model && e.Stage != nil {
			t.Logf("event: %s %s stage %d from %s to %s", e.Type, e.Subject, *e.Stage, e.From, e.To)
			moved++
		} else if e.From != victim {
			// A later replay a stalled machine caused, away from a live node.
			t.Logf("event not about the kill: %+v", e)
		}
	}
	if moved != held || fromVictim != held {
		t.Fatalf("want %d session_replay events from %s on /v1/events of the entry node: %+v", held, victim, replays)
	}
}
