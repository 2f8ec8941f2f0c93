package dash

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/events"
	"github.com/layermesh/layermesh/partition/modelgen"
	"github.com/layermesh/layermesh/test/harness"
)

const (
	model  = "gpt"
	nodes  = 3
	budget = 1 << 30
	// ui is the node whose dashboard the browser shows; victim is killed, drained is
	// drained from the page.
	ui, victim, drained = 0, 2, 1
	// signIn is the login form's button.
	signIn = `#login-form button[type="submit"]`
	// deadWithin is how soon after the SIGKILL the page must show the node dead.
	deadWithin = 10 * time.Second
)

var gptCfg = modelgen.GPTConfig{Layers: 3, Dim: 64, Heads: 2, Vocab: 128, Context: 16, Seed: 5, Name: "gpt-dash"}

// dashCluster is the cluster and what the test needs around it.
type dashCluster struct {
	*harness.Cluster
	token, tokenFile, meshctl, shots string
}

func (c *dashCluster) client(i int) *client.Client {
	cl, err := client.New(c.HTTPAddr(i), client.WithToken(c.token))
	if err != nil {
		panic(err) // HTTPAddr is always host:port
	}
	return cl
}

func startDashCluster(t *testing.T) *dashCluster {
	t.Helper()
	c := harness.StartCluster(t, nodes, harness.ClusterOptions{
		Flags: func(c *harness.Cluster, n *harness.Node) []string {
			return append(c.DefaultFlags(n), "--threads", "1", "--mem-budget", strconv.Itoa(budget))
		},
	})
	token, err := c.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dc := &dashCluster{Cluster: c, token: token, tokenFile: filepath.Join(c.Node(0).DataDir, harness.AdminTokenFile),
		meshctl: harness.BuildBinary(t, "./cmd/meshctl"), shots: filepath.Join(root, "test", "results", "dash")}
	if err := os.MkdirAll(dc.shots, 0o755); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, 200*time.Millisecond, func() error {
		ns, err := dc.client(ui).Nodes(context.Background())
		if err != nil {
			return err
		}
		alive := 0
		for _, n := range ns {
			if n.State == "alive" && n.Health == "alive" {
				alive++
			}
		}
		if alive != nodes {
			return fmt.Errorf("%d of %d members alive", alive, nodes)
		}
		return nil
	})
	return dc
}

// deploy puts a 3-stage model on the cluster, one replica a stage, and waits until
// every stage is ready.
func (c *dashCluster) deploy(t *testing.T) {
	t.Helper()
	m, err := modelgen.GPT(gptCfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "gpt.onnx")
	if err := modelgen.WriteFile(m, path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.client(ui).UploadModel(ctx, model, f, fi.Size(), client.UploadOptions{Stages: 3, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 3*time.Minute, 250*time.Millisecond, func() error {
		st, err := c.client(ui).Model(context.Background(), model)
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("model not ready: %s", st.Reason)
		}
		return nil
	})
}

// infer sends n requests through node via, so the page has rates and latencies.
func (c *dashCluster) infer(t *testing.T, via, n int) {
	t.Helper()
	ids := make([]int64, 8)
	for i := range ids {
		ids[i] = int64(i * 7 % gptCfg.Vocab)
	}
	req := &wire.Request{Inputs: []tensor.Tensor{tensor.FromInt64(modelgen.GPTInput, []int64{1, int64(len(ids))}, ids)}}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := c.client(via).Infer(ctx, model, req, client.InferOptions{})
		cancel()
		if err != nil {
			t.Fatalf("infer: %v", err)
		}
	}
}

// traffic sends requests through node via, one at a time, until the returned func
// is called: the page then shows live rates.
func (c *dashCluster) traffic(t *testing.T, via int) func() {
	t.Helper()
	ids := []int64{3, 1, 4, 1, 5, 9, 2, 6}
	req := &wire.Request{Inputs: []tensor.Tensor{tensor.FromInt64(modelgen.GPTInput, []int64{1, int64(len(ids))}, ids)}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			_, _ = c.client(via).Infer(rctx, model, req, client.InferOptions{}) // figures only; correctness is other tests' business
			rcancel()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); <-done }
}

// plan is the model's stages and their replicas as the API reports them.
func (c *dashCluster) plan(t *testing.T) [][]string {
	t.Helper()
	st, err := c.client(ui).Model(context.Background(), model)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]string, len(st.Stages))
	for _, s := range st.Stages {
		out[s.Index] = s.Replicas
	}
	return out
}

// browser starts headless Chromium. Root needs --no-sandbox; /dev/shm is small in
// containers.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (make setup installs Debian's chromium): %v", err)
	}
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("force-device-scale-factor", "1"),
		chromedp.WindowSize(1280, 860),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// waitFor polls expr in the page until it is true, up to d.
func waitFor(t *testing.T, ctx context.Context, what, expr string, d time.Duration) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("%s: the page did not get there within %s (%v); it shows:\n%s", what, d, err, body)
	}
}

func (c *dashCluster) screenshot(t *testing.T, ctx context.Context, name string) []byte {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(c.shots, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	return png
}

// planShownJS is true once the page shows exactly plan: for every stage, a ready chip
// for each replica and no other chip.
func planShownJS(plan [][]string) string {
	b, _ := json.Marshal(plan)
	return fmt.Sprintf(`(() => {
	  const plan = %s;
	  return plan.every((replicas, k) => {
	    const chips = [...document.querySelectorAll('.chip[data-model="%s"][data-stage="' + k + '"]')];
	    return chips.length === replicas.length &&
	      replicas.every((r) => chips.some((c) => c.dataset.replica === r && c.dataset.ready === 'true'));
	  });
	})()`, b, model)
}

func TestDashboardShowsTheMeshFailoverAndDrain(t *testing.T) {
	c := startDashCluster(t)
	c.deploy(t)
	ctx := browser(t)
	url := "http://" + c.HTTPAddr(ui) + "/ui/"
	plan := c.loginAndSeeTheMesh(t, ctx, url)
	name := c.killAndSeeTheStagesMove(t, ctx, plan)
	dname := c.drainFromThePage(t, ctx)
	c.checkMeshctlEvents(t, name, dname)
}

// loginAndSeeTheMesh: without a token the page shows the login and nothing of the
// cluster; a wrong token is refused; the right one shows 3 nodes, their links and the
// plan. It returns the plan.
func (c *dashCluster) loginAndSeeTheMesh(t *testing.T, ctx context.Context, url string) [][]string {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "login shown", `!document.querySelector('#login').hidden && document.querySelector('#dashboard').hidden`, 30*time.Second)
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		if strings.Contains(text, c.Node(i).Name) {
			t.Fatalf("before login the page shows %s:\n%s", c.Node(i).Name, text)
		}
	}
	c.screenshot(t, ctx, "01-login")

	// A wrong token is refused; the right one shows 3 nodes and the plan.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("token"), "not-a-token"), chromedp.Click(chromedp.CSS(signIn))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "wrong token refused", `document.querySelector('#login-error').textContent.includes('refused')`, 30*time.Second)
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("token"), c.token), chromedp.Click(chromedp.CSS(signIn))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "3 nodes shown", `document.querySelectorAll('#nodes tbody tr[data-health="alive"]').length === 3 &&
		document.querySelectorAll('#map g[data-node]').length === 3`, 30*time.Second)
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`sessionStorage.getItem('layermesh.token') + '|' + location.href`))
	if err != nil {
		t.Fatal(err)
	}
	if stored != c.token+"|"+url {
		t.Fatalf("token kept as %q (want it in sessionStorage and never in the URL)", stored)
	}
	plan := c.plan(t)
	waitFor(t, ctx, fmt.Sprintf("plan %v shown", plan), planShownJS(plan), 30*time.Second)
	// Every pair of nodes has probed its link; the map labels all three.
	waitFor(t, ctx, "3 measured links shown", `document.querySelectorAll('#map .link-label').length === 3 &&
		[...document.querySelectorAll('#map .link-label')].every((l) => / ms · /.test(l.textContent))`, 60*time.Second)
	c.infer(t, ui, 12)
	waitFor(t, ctx, "stage latencies shown", `[...document.querySelectorAll('[data-stage-row] td:nth-child(4)')].some((td) => td.textContent.endsWith('ms'))`, 30*time.Second)
	c.screenshot(t, ctx, "02-mesh")

	return plan
}

// killAndSeeTheStagesMove SIGKILLs the victim: within deadWithin the page shows it
// dead, then its stages placed elsewhere and ready. It returns the victim's name.
func (c *dashCluster) killAndSeeTheStagesMove(t *testing.T, ctx context.Context, plan [][]string) string {
	t.Helper()
	name := c.Node(victim).Name
	var held bool
	for _, reps := range plan {
		held = held || slices.Contains(reps, name)
	}
	if !held {
		t.Fatalf("%s serves no stage in %v: killing it would move nothing", name, plan)
	}
	killed := time.Now()
	if err := c.Kill(victim); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, name+" shown dead", fmt.Sprintf(`document.querySelector('#nodes tr[data-node=%q]')?.dataset.health === 'dead' &&
		document.querySelector('#map g[data-node=%q]')?.dataset.health === 'dead'`, name, name), deadWithin)
	t.Logf("the page showed %s dead %.1fs after the SIGKILL", name, time.Since(killed).Seconds())
	harness.Eventually(t, 2*time.Minute, 250*time.Millisecond, func() error {
		p := c.plan(t)
		for k, reps := range p {
			if len(reps) == 0 || slices.Contains(reps, name) {
				return fmt.Errorf("stage %d on %v", k, reps)
			}
		}
		st, err := c.client(ui).Model(context.Background(), model)
		if err != nil || !st.Ready {
			return fmt.Errorf("model not ready again: %v %s", err, st.Reason)
		}
		plan = p
		return nil
	})
	waitFor(t, ctx, fmt.Sprintf("stages moved to %v", plan), planShownJS(plan), 30*time.Second)
	waitFor(t, ctx, "placement event shown", `!!document.querySelector('#events li[data-type="placement"]')`, 30*time.Second)
	stopTraffic := c.traffic(t, ui)
	waitFor(t, ctx, "rates and latencies after the move", `[...document.querySelectorAll('[data-stage-row]')].every((tr) =>
		parseFloat(tr.children[2].textContent) > 0 && tr.children[3].textContent.endsWith('ms'))`, 60*time.Second)
	stopTraffic()
	png := c.screenshot(t, ctx, "03-failover")
	if os.Getenv("LAYERMESH_DASH_SCREENSHOT") == "docs" {
		root, _ := harness.RepoRoot()
		if err := os.WriteFile(filepath.Join(root, "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	return name
}

// drainFromThePage drains a node through the page's confirmation while meshctl
// follows the events, and returns its name.
func (c *dashCluster) drainFromThePage(t *testing.T, ctx context.Context) string {
	t.Helper()
	dname := c.Node(drained).Name
	followed := c.followEvents(t)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#nodes tr[data-node=%q] button[data-action="drain"]`, dname)))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "drain confirmation", `document.querySelector('#confirm').open && document.querySelector('#confirm-title').textContent.includes(`+strconv.Quote(dname)+`)`, 10*time.Second)
	c.screenshot(t, ctx, "04-confirm-drain")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("confirm-ok"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, dname+" shown draining", fmt.Sprintf(`document.querySelector('#nodes tr[data-node=%q]')?.dataset.state === 'draining' &&
		!!document.querySelector('#nodes tr[data-node=%q] button[data-action="undrain"]') &&
		!!document.querySelector('#events li[data-type="drain"]')`, dname, dname), 30*time.Second)
	ns, err := c.client(ui).Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.Name == dname && n.State != "draining" {
			t.Fatalf("the page shows %s draining, the API says %q", dname, n.State)
		}
	}
	select {
	case e := <-followed:
		if e.Node != dname {
			t.Fatalf("meshctl events --follow printed a drain of %q, want %s", e.Node, dname)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("meshctl events --follow did not print the drain within 30s")
	}
	c.screenshot(t, ctx, "05-drained")
	c.phoneScreenshot(t, ctx)

	return dname
}

// phoneScreenshot shows the same page on a phone-sized screen.
func (c *dashCluster) phoneScreenshot(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow {
		wide, _ := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('body *')]
		  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
		  .slice(0, 8).map((e) => e.tagName + '#' + e.id + '.' + e.className.baseVal + e.className + ' ' + Math.round(e.getBoundingClientRect().right))`))
		t.Errorf("on a 390 px wide screen the page scrolls sideways; too wide: %v", wide)
	}
	c.screenshot(t, ctx, "06-phone")
}

// followEvents runs meshctl events --follow --json and delivers the first drain event
// it prints. It starts with the recent events, so a drain that happens before its
// stream is open is still printed (the test drains only once).
func (c *dashCluster) followEvents(t *testing.T) <-chan events.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, c.meshctl, "events", "--follow", "--json", "--recent", "50")
	cmd.Env = append(os.Environ(), "LAYERMESH_ADDR="+c.HTTPAddr(ui), "LAYERMESH_TOKEN_FILE="+c.tokenFile, "LAYERMESH_TOKEN=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	drains := make(chan events.Event, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e events.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Type == events.Drain {
				drains <- e
				return
			}
		}
	}()
	return drains
}

// checkMeshctlEvents reads the story back with meshctl events --json: the victim
// dead, a placement epoch that moved its stages, the drain, in id order.
func (c *dashCluster) checkMeshctlEvents(t *testing.T, dead, drainedNode string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.meshctl, "events", "--json", "--recent", "1000")
	cmd.Env = append(os.Environ(), "LAYERMESH_ADDR="+c.HTTPAddr(ui), "LAYERMESH_TOKEN_FILE="+c.tokenFile, "LAYERMESH_TOKEN=")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshctl events: %v: %s", err, stderr.String())
	}
	var last uint64
	var sawDead, sawMove, sawDrain bool
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e events.Event
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("meshctl events --json line %q: %v", line, err)
		}
		if e.ID <= last {
			t.Fatalf("event %d after %d: out of order", e.ID, last)
		}
		last = e.ID
		switch {
		case e.Type == events.MemberState && e.Node == dead && e.State == "dead":
			sawDead = true
		case e.Type == events.Placement && slices.ContainsFunc(e.Moved, func(m events.StageMove) bool { return slices.Contains(m.Removed, dead) }):
			sawMove = sawDead
		case e.Type == events.Drain && e.Node == drainedNode:
			sawDrain = sawMove
		}
	}
	if !sawDead || !sawMove || !sawDrain {
		err := errors.New("missing")
		t.Fatalf("meshctl events lacks, in order, %s dead (%v), its stages moved (%v), %s drained (%v): %v\n%s",
			dead, sawDead, sawMove, drainedNode, sawDrain, err, out.String())
	}
}
