package node

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
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api"
	"github.com/layermesh/layermesh/api/wire"
	"github.com/layermesh/layermesh/consensus"
	"github.com/layermesh/layermesh/mesh"
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
func (c *Cluster) PutModel(ctx context.Context, name string, body io.Reader, opts api.DeployOptions) (wire.ModelStatus, error) {
	if !validName.MatchString(name) {
		return wire.ModelStatus{}, fmt.Errorf("%w: %q (want 1-128 of [A-Za-z0-9._-], not starting with . or -)", api.ErrInvalidName, name)
	}
	c.deployMu.Lock()
	defer c.deployMu.Unlock()
	tmpDir, err := os.MkdirTemp(c.opts.DataDir, "deploy-")
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	defer os.RemoveAll(tmpDir)

	srcHash, srcSize, err := c.storeUpload(body, filepath.Join(tmpDir, "source.onnx"))
	if err != nil {
		return wire.ModelStatus{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	replicas := opts.Replicas
	if replicas <= 0 {
		replicas = c.opts.Replicas
	}
	st := c.store.State()
	for _, m := range st.Models {
		if m.Name == name && m.SourceSHA256 == srcHash && (opts.Stages == 0 || opts.Stages == len(m.Stages)) &&
			deployFigures(m).replicas(c.opts.Replicas) == replicas {
			c.log.Info("deploy: same model and options already deployed", "model", name, "version", m.Version)
			return c.ModelStatus(ctx, name, m.Version)
		}
	}

	model, err := c.cut(name, srcHash, srcSize, opts.Stages, replicas, tmpDir, st)
	if err != nil {
		return wire.ModelStatus{}, err
	}
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
	return c.status(st, model, c.liveMembers()), nil
}

// storeUpload streams body to path while hashing it, then stores it as a blob.
func (c *Cluster) storeUpload(body io.Reader, path string) (string, int64, error) {
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

func (c *Cluster) putBlobFile(hash, path string) error {
	store := c.mesh.Blobs()
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

// cut plans the stages over the live members and writes them as blobs. The model it
// returns has no version yet: the FSM allocates it on commit.
func (c *Cluster) cut(name, srcHash string, srcSize int64, stages, replicas int, tmpDir string, st *consensus.ClusterState) (consensus.Model, error) {
	srcPath := c.mesh.Blobs().Path(srcHash)
	pm, err := partition.Load(srcPath)
	if err != nil {
		return consensus.Model{}, fmt.Errorf("deploy %s: %w: %w", name, accel.ErrInvalidModel, err)
	}
	g, err := partition.Analyze(pm, nil)
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
	plan, err := partition.Plan(g, devices, partition.PlanOptions{
		Stages: stages, LinkBandwidth: c.linkBandwidth(devices), OutputBandwidth: outputHandoffRate,
	})
	if err != nil {
		switch {
		case errors.Is(err, partition.ErrDoesNotFit):
			return consensus.Model{}, fmt.Errorf("deploy %s: %w: %w", name, ErrInsufficientCapacity, err)
		case errors.Is(err, partition.ErrTooManyStages):
			return consensus.Model{}, fmt.Errorf("deploy %s: %w: %w", name, api.ErrBadRequest, err)
		}
		return consensus.Model{}, fmt.Errorf("deploy %s: plan: %w", name, err)
	}
	outDir := filepath.Join(tmpDir, "stages")
	man, err := partition.Extract(pm, g, plan, outDir)
	if err != nil {
		return consensus.Model{}, fmt.Errorf("deploy %s: cut stages: %w", name, err)
	}
	model := consensus.Model{
		Name: name, SourceSHA256: srcHash, SourceSize: srcSize,
		Signature: consensus.Signature{Inputs: specs(man.Inputs), Outputs: specs(man.Outputs)},
		Created:   time.Now().UTC(),
		Deploy:    consensus.DeployInfo{Replicas: replicas, Cutter: c.self},
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
func (c *Cluster) planDevices(st *consensus.ClusterState) []partition.Device {
	live := c.liveMembers()
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
		return cmpStrings(a.Name, b.Name)
	})
	return out
}

// linkBandwidth gives the planner the link probes' measured bandwidth. This node only
// measures its own links, so the link from device i to device j is taken as this
// node's measured link to j (else to i), else the planner's default.
func (c *Cluster) linkBandwidth(devices []partition.Device) func(i, j int) float64 {
	return func(i, j int) float64 {
		for _, d := range []string{devices[j].Name, devices[i].Name} {
			p, err := peer.Decode(d)
			if d == c.self || err != nil {
				continue
			}
			if ls, ok := c.mesh.Link(p); ok && ls.Bandwidth > 0 {
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

// applyRetrying commits cmd, retrying the same command (same request id, so the FSM
// applies it once) while the outcome is unknown or no leader is known.
func (c *Cluster) applyRetrying(ctx context.Context, cmd consensus.Command) error {
	_, err := c.commitRetrying(ctx, cmd)
	return err
}

// commitRetrying is applyRetrying for a caller that needs the result.
func (c *Cluster) commitRetrying(ctx context.Context, cmd consensus.Command) (consensus.Result, error) {
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
			if sleepCtx(ctx, backoff) == nil {
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
func (c *Cluster) DeleteModel(ctx context.Context, name string) error {
	found := false
	for _, m := range c.store.State().Models {
		found = found || m.Name == name
	}
	if !found {
		return fmt.Errorf("%w: %s", api.ErrModelNotFound, name)
	}
	return c.applyRetrying(ctx, consensus.NewCommand(consensus.DeleteModel{Name: name}))
}

// Infer validates the request against the model's signature and routes it through the
// stages.
func (c *Cluster) Infer(ctx context.Context, req api.InferRequest) (api.InferResult, error) {
	if !c.caughtUp.Load() {
		return api.InferResult{}, fmt.Errorf("%w: cluster state not caught up since start", api.ErrNotReady)
	}
	st := c.store.View()
	m, err := c.resolveVersion(st, req.Model, req.Version)
	if err != nil {
		return api.InferResult{}, err
	}
	if err := checkSignature(m.Signature, req.Inputs, req.Outputs); err != nil {
		return api.InferResult{}, err
	}
	out, err := c.router.Infer(ctx, m.Name, m.Version, req.Inputs, req.Outputs)
	if err != nil {
		switch {
		case errors.Is(err, ErrNoReplica), errors.Is(err, ErrStageFailed):
			// Every replica of a stage is gone or failed: the client may retry once
			// the placement has healed (503 with Retry-After).
			return api.InferResult{}, fmt.Errorf("%w: %w", api.ErrNoReplica, err)
		case errors.Is(err, ErrUnknownModel):
			return api.InferResult{}, fmt.Errorf("%w: %w", api.ErrModelNotFound, err)
		}
		return api.InferResult{}, err
	}
	return api.InferResult{Version: m.Version, Outputs: out}, nil
}

// resolveVersion finds the model version asked for; "" means the newest version whose
// every stage has a ready replica, else the newest placed one.
func (c *Cluster) resolveVersion(st *consensus.ClusterState, name, version string) (consensus.Model, error) {
	if version != "" {
		m, ok := st.Models[consensus.ModelKey(name, version)]
		if !ok {
			return consensus.Model{}, fmt.Errorf("%w: %s version %s", api.ErrModelNotFound, name, version)
		}
		return m, nil
	}
	var versions []consensus.Model
	for _, m := range st.Models {
		if m.Name == name {
			versions = append(versions, m)
		}
	}
	if len(versions) == 0 {
		return consensus.Model{}, fmt.Errorf("%w: %s", api.ErrModelNotFound, name)
	}
	slices.SortFunc(versions, func(a, b consensus.Model) int { return versionNumber(b.Version) - versionNumber(a.Version) })
	live := c.liveMembers()
	for _, m := range versions {
		if c.modelReady(st, m, live) {
			return m, nil
		}
	}
	return versions[0], nil
}

func versionNumber(v string) int {
	n, _ := strconv.Atoi(v)
	return n
}

// modelReady says whether every stage of m has a ready replica among the live members.
func (c *Cluster) modelReady(st *consensus.ClusterState, m consensus.Model, live map[string]mesh.NodeMeta) bool {
	if _, ok := st.Placements[consensus.ModelKey(m.Name, m.Version)]; !ok {
		return false
	}
	for k := range m.Stages {
		if len(c.readyReplicas(st, m, k, live)) == 0 {
			return false
		}
	}
	return true
}

// readyReplicas lists the live nodes serving stage k of m ready.
func (c *Cluster) readyReplicas(st *consensus.ClusterState, m consensus.Model, k int, live map[string]mesh.NodeMeta) []string {
	key := StageKey{Model: m.Name, Version: m.Version, Stage: k}
	var out []string
	for id, meta := range live {
		if (id == c.self && c.runtime.Serves(key)) || (id != c.self && servesReady(st, id, meta, key)) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// checkSignature rejects inputs the model cannot take before any stage sees them:
// unknown, missing or repeated names, a wrong dtype, rank or fixed dim, and unknown
// output names.
func checkSignature(sig consensus.Signature, inputs []tensor.Tensor, outputs []string) error {
	seen := make(map[string]bool, len(inputs))
	for _, t := range inputs {
		i := slices.IndexFunc(sig.Inputs, func(s consensus.TensorSpec) bool { return s.Name == t.Name })
		if i < 0 {
			return fmt.Errorf("%w: unknown input %q", accel.ErrInputMismatch, t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("%w: input %q given twice", accel.ErrInputMismatch, t.Name)
		}
		seen[t.Name] = true
		spec := sig.Inputs[i]
		if int32(t.DType) != spec.DType {
			return fmt.Errorf("%w: %w: input %q is %s, the model takes %s", accel.ErrInputMismatch, accel.ErrDTypeMismatch,
				t.Name, t.DType, tensor.DType(spec.DType))
		}
		if len(t.Shape) != len(spec.Shape) {
			return fmt.Errorf("%w: %w: input %q has rank %d, the model takes %d", accel.ErrInputMismatch, accel.ErrShapeMismatch,
				t.Name, len(t.Shape), len(spec.Shape))
		}
		for d, want := range spec.Shape {
			if want >= 0 && t.Shape[d] != want {
				return fmt.Errorf("%w: %w: input %q dim %d is %d, the model takes %d", accel.ErrInputMismatch, accel.ErrShapeMismatch,
					t.Name, d, t.Shape[d], want)
			}
		}
		if err := t.Validate(); err != nil {
			return err
		}
	}
	for _, s := range sig.Inputs {
		if !seen[s.Name] {
			return fmt.Errorf("%w: input %q missing", accel.ErrInputMismatch, s.Name)
		}
	}
	for _, name := range outputs {
		if !slices.ContainsFunc(sig.Outputs, func(s consensus.TensorSpec) bool { return s.Name == name }) {
			return fmt.Errorf("%w: unknown output %q", accel.ErrInputMismatch, name)
		}
	}
	return nil
}

// ListModels describes every deployed model version.
func (c *Cluster) ListModels(ctx context.Context) ([]wire.ModelStatus, error) {
	st, err := c.readCatalogue(ctx)
	if err != nil {
		return nil, err
	}
	live := c.liveMembers()
	keys := slices.Sorted(maps.Keys(st.Models))
	out := make([]wire.ModelStatus, 0, len(keys))
	for _, k := range keys {
		out = append(out, c.status(st, st.Models[k], live))
	}
	return out, nil
}

// ModelStatus describes one model version ("" means the one Infer would use).
func (c *Cluster) ModelStatus(ctx context.Context, name, version string) (wire.ModelStatus, error) {
	if !c.caughtUp.Load() {
		return wire.ModelStatus{}, fmt.Errorf("%w: cluster state not caught up since start", api.ErrNotReady)
	}
	st, err := c.readCatalogue(ctx)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	m, err := c.resolveVersion(st, name, version)
	if err != nil {
		return wire.ModelStatus{}, err
	}
	return c.status(st, m, c.liveMembers()), nil
}

// readCatalogue is a linearizable read of the cluster state for the model catalogue
// answers: a model whose upload was acknowledged is listed by every node from then on,
// even a follower that has not applied the entry yet or an old leader just resumed
// from a pause. A node that cannot reach the majority answers 503. Inference keeps
// reading the local state: it needs placements, not a fresh catalogue.
func (c *Cluster) readCatalogue(ctx context.Context) (*consensus.ClusterState, error) {
	ctx, cancel := context.WithTimeout(ctx, writeRetryBudget)
	defer cancel()
	st, err := c.store.Read(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot confirm the cluster state with a majority: %w", api.ErrNotReady, err)
	}
	return st, nil
}

func (c *Cluster) status(st *consensus.ClusterState, m consensus.Model, live map[string]mesh.NodeMeta) wire.ModelStatus {
	s := wire.ModelStatus{Name: m.Name, Version: m.Version, SHA256: m.SourceSHA256, Size: m.SourceSize, Source: "upload",
		LoadedAt: m.Created}
	for _, in := range m.Signature.Inputs {
		s.Inputs = append(s.Inputs, tensorMeta(in))
	}
	for _, out := range m.Signature.Outputs {
		s.Outputs = append(s.Outputs, tensorMeta(out))
	}
	pl, placed := st.Placements[consensus.ModelKey(m.Name, m.Version)]
	s.Ready = placed
	for k := range m.Stages {
		ss := wire.StageStatus{Index: k}
		if placed && k < len(pl.Stages) {
			ss.Replicas = c.names(st, pl.Stages[k])
		}
		ss.Ready = len(c.readyReplicas(st, m, k, live)) > 0
		s.Ready = s.Ready && ss.Ready
		s.Stages = append(s.Stages, ss)
	}
	switch {
	case !placed:
		s.Reason = "waiting for placement"
		if reason := c.placementError(consensus.ModelKey(m.Name, m.Version)); reason != "" {
			s.Reason = reason
		}
	case !s.Ready:
		s.Reason = "stages loading"
	default:
		// Serving, but possibly with fewer replicas than asked for.
		s.Reason = c.placementError(consensus.ModelKey(m.Name, m.Version))
	}
	return s
}

func tensorMeta(t consensus.TensorSpec) wire.TensorMetadata {
	return wire.TensorMetadata{Name: t.Name, Datatype: tensor.DType(t.DType).KServe(), Shape: slices.Clone(t.Shape)}
}

// names maps peer ids to member names where known.
func (c *Cluster) names(st *consensus.ClusterState, ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id
		if m, ok := st.Members[id]; ok && m.Name != "" {
			out[i] = m.Name
		}
	}
	return out
}
