package control

// Deploy: the node that receives an upload does all the heavy work before anything is
// committed. It stores the source as a blob, plans the stages over the live members'
// free budgets and speeds (partition's exact planner), cuts the stage files and stores
// them as content-addressed blobs, and only then commits, in one Raft write, the model
// manifest with its deploy figures (replication factor, per-stage memory and FLOPs,
// which node cut it); the FSM allocates the version number. A leader lost at any point
// leaves either no model or a complete one (the same command retried after an unknown
// outcome is deduplicated by the FSM), never half a deploy. Placement is the leader's
// controller's job: it is level-triggered from the Raft state, so whichever node leads
// after the manifest is committed places it. Serving nodes pull their stage blobs from
// the cutting node (or any replica that already has them); identical stage files hash
// the same, so a redeploy of the same weights moves nothing.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/internal/ctxtime"
	"github.com/layermesh/layermesh/partition"
)

// deployInfo reads the deploy figures a model version was committed with.
type deployInfo consensus.DeployInfo

// deployFigures returns m's deploy figures; a zero field (a model deployed by a
// build that did not record it) makes placement fall back to the manifest's sizes.
func deployFigures(m consensus.Model) deployInfo { return deployInfo(m.Deploy) }

func (d deployInfo) memBytes(m consensus.Model, k int) int64 {
	if k < len(d.StageMem) && d.StageMem[k] > 0 {
		return d.StageMem[k]
	}
	return max(m.Stages[k].ParamBytes, m.Stages[k].Size)
}

func (d deployInfo) cost(m consensus.Model, k int) float64 {
	if k < len(d.StageFLOPs) && d.StageFLOPs[k] > 0 {
		return float64(d.StageFLOPs[k])
	}
	return float64(m.Stages[k].ParamBytes)
}

func (d deployInfo) replicas(def int) int {
	if d.Replicas > 0 {
		return d.Replicas
	}
	return def
}

// PutModel deploys the ONNX model read from body as a new version of name. It returns
// once the manifest is committed; the model turns ready when every stage has a ready
// replica (ModelStatus says so). Uploading the same bytes with the same options again
// returns the existing version and moves nothing.
func (c *Controller) PutModel(ctx context.Context, name string, body io.Reader, opts api.DeployOptions) (wire.ModelStatus, error) {
	if !ValidModelName(name) {
		return wire.ModelStatus{}, fmt.Errorf("%w: %q (want 1-128 of [A-Za-z0-9._-], not starting with . or -)", api.ErrInvalidName, name)
	}
	tmpDir, err := os.MkdirTemp(c.cfg.DataDir, "deploy-")
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	defer os.RemoveAll(tmpDir)

	// The body is read before the deploy slot is taken: a slow client delays only
	// its own deploy.
	srcHash, srcSize, err := c.storeUpload(body, filepath.Join(tmpDir, "source.onnx"))
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	// One deploy at a time on this node: cutting is CPU- and disk-bound, and the
	// version number is taken from the state. A deploy waiting here gives up when its
	// request ends.
	if err := c.deploys.acquire(ctx); err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: waiting for the deploy before it: %w", name, err)
	}
	defer c.deploys.release()
	text, err := c.storeText(opts)
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	replicas := opts.Replicas
	if replicas <= 0 {
		replicas = c.cfg.Replicas
	}
	var state []partition.StatePair
	for _, s := range opts.State {
		p, err := partition.ParseStatePair(s)
		if err != nil {
			return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w: %w", name, api.ErrBadRequest, err)
		}
		state = append(state, p)
	}
	comp := askedCompression(opts.Compress)
	planPast, err := measuredPast(opts.Plan)
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	request, err := deployRequest(srcHash, opts.Stages, replicas, text, state, comp, planPast)
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	st := c.store.State()
	for _, m := range st.Models {
		if m.Name == name && m.SourceSHA256 == srcHash && (opts.Stages == 0 || opts.Stages == len(m.Stages)) &&
			deployFigures(m).replicas(c.cfg.Replicas) == replicas && sameText(m.Text, text) && sameState(m, state) &&
			sameCompression(m.Deploy.Compression, comp) && samePlan(m, planPast) {
			c.log.Info("deploy: same model and options already deployed", "model", name, "version", m.Version)
			return c.ModelStatus(ctx, name, m.Version)
		}
	}

	co := cutOptions{path: c.blobs.Path(srcHash), stages: opts.Stages, replicas: replicas, state: state, planPast: planPast}
	if comp != nil {
		if co.path, err = c.compressUpload(ctx, co.path, tmpDir, comp); err != nil {
			return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
		}
		c.log.Info("deploy: compressed", "model", name, "quantize", comp.Quantize, "prune", comp.Prune,
			"bytes_before", comp.SizeBefore, "bytes_after", comp.SizeAfter, "max_rel", comp.MaxRel)
	}
	model, err := c.cut(ctx, name, srcHash, srcSize, co, tmpDir, st)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	model.Text = text
	model.Deploy.Compression = comp
	model.Deploy.Request = request
	res, err := c.commitRetrying(ctx, consensus.NewCommand(consensus.PutModel{Model: model}))
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	model.Version = res.ModelVersion
	c.log.Info("model deployed; waiting for placement", "model", name, "version", model.Version,
		"stages", len(model.Stages), "replicas", replicas, "source_bytes", srcSize)
	// A linearizable read makes this node's state include the commit before answering.
	st, err = c.store.Read(ctx, true)
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: committed, but reading it back: %w", name, err)
	}
	if m, ok := st.Models[consensus.ModelKey(name, model.Version)]; ok {
		// The state's record: when the same deploy, tried first elsewhere, was
		// committed before this one, the FSM answered with that version, whose stages
		// are not the ones cut here.
		model = m
	}
	return c.status(st, model, c.view.LiveMembers()), nil
}

// deployRequest identifies what a deploy is asked for: the upload's bytes and the
// options that decide what it deploys. The FSM applies a PutModel whose request a
// version of the same name already has as that version (consensus.DeployInfo.Request).
func deployRequest(source string, stages, replicas int, text *consensus.TextInfo, state []partition.StatePair, comp *consensus.CompressionInfo, planPast int) (string, error) {
	raw, err := json.Marshal(struct {
		Source      string                     `json:"source"`
		Stages      int                        `json:"stages"`
		Replicas    int                        `json:"replicas"`
		Text        *consensus.TextInfo        `json:"text"`
		State       []partition.StatePair      `json:"state"`
		Compression *consensus.CompressionInfo `json:"compression"`
		PlanPast    int                        `json:"plan_past,omitempty"`
	}{source, stages, replicas, text, state, comp, planPast})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:]), nil
}

// storeText stores a deploy's tokenizer as a blob and says what the model records of
// its text side; nil when the deploy has no tokenizer. The API has checked both parts.
func (c *Controller) storeText(opts api.DeployOptions) (*consensus.TextInfo, error) {
	if opts.Tokenizer == nil {
		if opts.ChatTemplate != "" {
			return nil, fmt.Errorf("%w: a chat template needs a tokenizer", api.ErrBadRequest)
		}
		return nil, nil
	}
	sum := sha256.Sum256(opts.Tokenizer)
	hash := hex.EncodeToString(sum[:])
	if c.blobs.Has(hash) {
		if err := c.blobs.Touch(hash); err != nil {
			return nil, err
		}
	} else if _, err := c.blobs.Put(hash, bytes.NewReader(opts.Tokenizer)); err != nil {
		return nil, fmt.Errorf("storing the tokenizer: %w", err)
	}
	return &consensus.TextInfo{TokenizerSHA256: hash, TokenizerSize: int64(len(opts.Tokenizer)), ChatTemplate: opts.ChatTemplate}, nil
}

func sameText(a, b *consensus.TextInfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// storeUpload streams body to path while hashing it, then stores it as a blob.
func (c *Controller) storeUpload(body io.Reader, path string) (string, int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := c.putBlobFile(sum, path); err != nil {
		return "", 0, err
	}
	return sum, n, nil
}

func (c *Controller) putBlobFile(hash, path string) error {
	store := c.blobs
	if store.Has(hash) {
		// Reused by this deploy: no longer as old as its first store to the collector.
		return store.Touch(hash)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = store.Put(hash, f)
	return err
}

// recordedPast is the plan past a version records: a model without state pairs is
// timed at its analysed shapes whatever past was asked, so it records 1.
func recordedPast(g *partition.Graph, past int) int {
	if past > 0 && len(g.State) == 0 {
		return 1
	}
	return past
}

// samePlan says whether a deployed version was planned as a deploy asking for a
// measured plan at past (0: FLOPs) would plan it; for a version without state pairs
// any past is the same measured plan.
func samePlan(m consensus.Model, past int) bool {
	stateful := slices.ContainsFunc(m.Stages, func(s consensus.StageManifest) bool { return len(s.State) > 0 })
	if !stateful {
		return (m.Deploy.PlanPast > 0) == (past > 0)
	}
	return m.Deploy.PlanPast == past
}

// sameState says whether a deployed version has the declared state pairs; none
// declared (detected by name) matches any version of the same bytes.
func sameState(m consensus.Model, declared []partition.StatePair) bool {
	if declared == nil {
		return true
	}
	var have []partition.StatePair
	for _, s := range m.Stages {
		for _, p := range s.State {
			have = append(have, partition.StatePair{In: p.In, Out: p.Out})
		}
	}
	cmp := func(a, b partition.StatePair) int { return strings.Compare(a.In+"\x00"+a.Out, b.In+"\x00"+b.Out) }
	want := slices.Clone(declared)
	slices.SortFunc(want, cmp)
	slices.SortFunc(have, cmp)
	return slices.Equal(want, have)
}

// cutOptions are a deploy's choices for cut: the model file cut (the upload's blob, or
// its compressed copy), stage count (0: the planner's), replicas per stage, declared
// state pairs (nil: detected by name), and the past of the decode step a measured
// plan times (0: the plan balances FLOPs).
type cutOptions struct {
	path             string
	stages, replicas int
	state            []partition.StatePair
	planPast         int
}

// measuredPast is the past a deploy's measured plan times a decode step at: 0 when
// it plans on FLOPs, else at least 1.
func measuredPast(o api.PlanOptions) (int, error) {
	switch o.Basis {
	case "", api.PlanFLOPs:
		if o.Past > 0 {
			return 0, fmt.Errorf("%w: a plan past needs plan=%s", api.ErrBadRequest, api.PlanMeasured)
		}
		return 0, nil
	case api.PlanMeasured:
		return max(o.Past, 1), nil
	}
	return 0, fmt.Errorf("%w: plan %q (want %s or %s)", api.ErrBadRequest, o.Basis, api.PlanFLOPs, api.PlanMeasured)
}

// plan runs the planner over devices, its errors classified for the API.
func (c *Controller) plan(name string, g *partition.Graph, devices []partition.Device, stages int) (*partition.StagePlan, error) {
	plan, err := partition.Plan(g, devices, partition.PlanOptions{
		Stages: stages, LinkBandwidth: c.linkBandwidth(devices), OutputBandwidth: outputHandoffRate,
	})
	switch {
	case errors.Is(err, partition.ErrDoesNotFit):
		return nil, fmt.Errorf("deploy %s: %w: %w", name, ErrInsufficientCapacity, err)
	case errors.Is(err, partition.ErrTooManyStages):
		return nil, fmt.Errorf("deploy %s: %w: %w", name, api.ErrBadRequest, err)
	case err != nil:
		return nil, fmt.Errorf("deploy %s: plan: %w", name, err)
	}
	return plan, nil
}

// cut plans the stages over the live members and writes them as blobs. The model it
// returns has no version yet: the FSM allocates it on commit.
func (c *Controller) cut(ctx context.Context, name, srcHash string, srcSize int64, co cutOptions, tmpDir string, st *consensus.ClusterState) (consensus.Model, error) {
	stages, replicas := co.stages, co.replicas
	pm, err := partition.Load(co.path)
	if err != nil {
		return consensus.Model{}, fmt.Errorf("deploy %s: %w: %w", name, accel.ErrInvalidModel, err)
	}
	g, err := partition.AnalyzeWith(pm, partition.AnalyzeOptions{State: co.state})
	if errors.Is(err, partition.ErrStatePair) {
		return consensus.Model{}, fmt.Errorf("deploy %s: %w: %w", name, api.ErrBadRequest, err)
	}
	if err != nil {
		return consensus.Model{}, fmt.Errorf("deploy %s: %w: %w", name, accel.ErrInvalidModel, err)
	}
	devices := c.planDevices(st)
	if len(devices) == 0 {
		return consensus.Model{}, fmt.Errorf("deploy %s: %w: no live member", name, ErrInsufficientCapacity)
	}
	if stages > len(devices) {
		return consensus.Model{}, fmt.Errorf("deploy %s: %w: %d stages asked, %d live members",
			name, ErrInsufficientCapacity, stages, len(devices))
	}
	plan, err := c.plan(name, g, devices, stages)
	if err != nil {
		return consensus.Model{}, err
	}
	// A measured plan is worth its seconds of runs only where there is a cut to
	// place; the FLOP plan above has already refused what no cost can fix (too many
	// stages, budgets too small).
	if co.planPast > 0 && stages != 1 && len(devices) > 1 {
		if err := c.measureCosts(ctx, name, g, co.planPast, tmpDir, st); err != nil {
			return consensus.Model{}, err
		}
		if plan, err = c.plan(name, g, devices, stages); err != nil {
			return consensus.Model{}, err
		}
	}
	stageMS := make([]float64, len(plan.Stages))
	for i, s := range plan.Stages {
		stageMS[i] = math.Round(s.Seconds*1e6) / 1e3
	}
	c.log.Info("deploy: planned", "model", name, "measured", g.Measured(), "cuts", plan.Cuts(), "stage_ms", stageMS)
	outDir := filepath.Join(tmpDir, "stages")
	man, err := partition.Extract(pm, g, plan, outDir)
	if err != nil {
		return consensus.Model{}, fmt.Errorf("deploy %s: cut stages: %w", name, err)
	}
	model := consensus.Model{
		Name: name, SourceSHA256: srcHash, SourceSize: srcSize,
		Signature: consensus.Signature{Inputs: specs(man.Inputs), Outputs: specs(man.Outputs)},
		Created:   time.Now().UTC(),
		Deploy:    consensus.DeployInfo{Replicas: replicas, Cutter: c.cfg.Self, ContextLen: g.ContextLen(), PlanPast: recordedPast(g, co.planPast)},
	}
	for _, s := range man.Stages {
		if s.DataFile != "" {
			return consensus.Model{}, fmt.Errorf("deploy %s: stage %d needs external data (%s): not supported by the cluster runtime yet",
				name, s.Index, s.DataFile)
		}
		if err := c.putBlobFile(s.SHA256, filepath.Join(outDir, s.File)); err != nil {
			return consensus.Model{}, fmt.Errorf("deploy %s: store stage %d: %w", name, s.Index, err)
		}
		sm := consensus.StageManifest{Index: s.Index, SHA256: s.SHA256, Size: s.Size, ParamBytes: s.ParamBytes}
		for _, p := range s.State {
			sm.State = append(sm.State, consensus.StatePair{In: p.In, Out: p.Out})
		}
		for _, in := range s.Inputs {
			sm.Inputs = append(sm.Inputs, in.Name)
		}
		for _, out := range s.Outputs {
			sm.Outputs = append(sm.Outputs, out.Name)
		}
		model.Stages = append(model.Stages, sm)
		model.Deploy.StageMem = append(model.Deploy.StageMem, s.MemoryBytes)
		model.Deploy.StageFLOPs = append(model.Deploy.StageFLOPs, s.FLOPs)
	}
	return model, nil
}

// outputHandoffRate is the rate, in bytes/s, at which the planner counts the last
// stage's node handing the model's outputs to the client: what writing them to an
// HTTP connection costs that node's CPU. Measured here: writing 25.7 MB of logits to a
// loopback client takes the answering node about 12-14 ms of CPU beyond the stage
// itself (BenchmarkSplitPipelineParallel's CPU per request), about 2 GB/s. The link's
// own speed does not enter: in a pipeline the wire time overlaps the next request's
// compute, the CPU time does not.
const outputHandoffRate = 2e9

// planDevices lists the live members as planner devices: their budget minus what other
// models' placements already hold there, fastest first (ties: most free memory).
func (c *Controller) planDevices(st *consensus.ClusterState) []partition.Device {
	live := c.view.LiveMembers()
	used := usedBytes(st, "")
	var out []partition.Device
	for id, m := range st.Members {
		if _, ok := live[id]; !ok || m.State != consensus.MemberAlive {
			continue
		}
		free := m.Capacity.MemBudget - used[id]
		if free <= 0 {
			continue
		}
		// Capacity.Speed is GFLOP/s; the planner wants FLOP/s, so that a stage's compute
		// seconds and its transfer seconds (bytes over the probed bandwidth) add up.
		out = append(out, partition.Device{Name: id, MemBudget: free, Speed: max(m.Capacity.Speed, 1e-9) * 1e9})
	}
	slices.SortFunc(out, func(a, b partition.Device) int {
		if a.Speed != b.Speed {
			if a.Speed > b.Speed {
				return -1
			}
			return 1
		}
		if a.MemBudget != b.MemBudget {
			if a.MemBudget > b.MemBudget {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// linkBandwidth gives the planner the link probes' measured bandwidth. This node only
// measures its own links, so the link from device i to device j is taken as this
// node's measured link to j (else to i), else the planner's default.
func (c *Controller) linkBandwidth(devices []partition.Device) func(i, j int) float64 {
	return func(i, j int) float64 {
		for _, d := range []string{devices[j].Name, devices[i].Name} {
			p, err := peer.Decode(d)
			if d == c.cfg.Self || err != nil {
				continue
			}
			if ls, ok := c.links.Link(p); ok && ls.Bandwidth > 0 {
				return ls.Bandwidth
			}
		}
		return partition.DefaultLinkBandwidth
	}
}

// usedBytes sums, per node, the memory of the stages placed on it by every model
// version except the one keyed skip.
func usedBytes(st *consensus.ClusterState, skip string) map[string]int64 {
	used := make(map[string]int64)
	for key, pl := range st.Placements {
		m, ok := st.Models[key]
		if key == skip || !ok {
			continue
		}
		info := deployFigures(m)
		for k, reps := range pl.Stages {
			if k >= len(m.Stages) {
				continue
			}
			for _, id := range reps {
				used[id] += info.memBytes(m, k)
			}
		}
	}
	return used
}

func specs(in []partition.TensorSpec) []consensus.TensorSpec {
	out := make([]consensus.TensorSpec, len(in))
	for i, s := range in {
		out[i] = consensus.TensorSpec{Name: s.Name, DType: int32(s.DType), Shape: slices.Clone(s.Shape)}
	}
	return out
}

// Apply commits cmd, retrying the same command (same request id, so the FSM applies
// it once) while the outcome is unknown or no leader is known. Past writeRetryBudget
// it answers api.ErrNotReady (503), keeping Raft's outcome in the message. The node's
// token calls use it too.
func (c *Controller) Apply(ctx context.Context, cmd consensus.Command) error {
	_, err := c.commitRetrying(ctx, cmd)
	return err
}

// commitRetrying is Apply for a caller that needs the result.
func (c *Controller) commitRetrying(ctx context.Context, cmd consensus.Command) (consensus.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, writeRetryBudget)
	defer cancel()
	backoff := 100 * time.Millisecond
	for {
		res, err := c.store.Apply(ctx, cmd)
		if err == nil {
			return res, nil
		}
		retry := errors.Is(err, consensus.ErrUnknownOutcome) || errors.Is(err, consensus.ErrNoLeader) ||
			errors.Is(err, consensus.ErrNotLeader) || errors.Is(err, consensus.ErrForward) || errors.Is(err, consensus.ErrTimeout)
		if !retry {
			return consensus.Result{}, err
		}
		if ctx.Err() == nil {
			c.log.Warn("raft write not confirmed; retrying the same command", "err", err)
			if ctxtime.Sleep(ctx, backoff) == nil {
				backoff = min(2*backoff, time.Second)
				continue
			}
		}
		// No leader confirmed the write in time: this node is likely cut off from the
		// majority. Say so (503 with Retry-After) rather than hang until the client
		// gives up; the message keeps the outcome (failed or unknown) Raft reported.
		return consensus.Result{}, fmt.Errorf("%w: the cluster did not confirm the write within %v: %w", api.ErrNotReady, writeRetryBudget, err)
	}
}

// writeRetryBudget bounds how long a write keeps retrying while no leader confirms it:
// long enough to ride out an election (1.3-2.9 s measured here), short enough that a
// node cut off from the majority answers 503 instead of hanging.
const writeRetryBudget = 4 * time.Second

// DeleteModel removes every version of name and its placements; nodes unload the
// stages once their in-flight requests end.
func (c *Controller) DeleteModel(ctx context.Context, name string) error {
	found := false
	for _, m := range c.store.State().Models {
		found = found || m.Name == name
	}
	if !found {
		return fmt.Errorf("%w: %s", api.ErrModelNotFound, name)
	}
	// This node's state may lag the leader's: a delete that another node committed
	// first reaches the FSM as not found, which is the same answer.
	err := c.Apply(ctx, consensus.NewCommand(consensus.DeleteModel{Name: name}))
	if errors.Is(err, consensus.ErrNotFound) {
		return fmt.Errorf("%w: %s: %w", api.ErrModelNotFound, name, err)
	}
	return err
}
