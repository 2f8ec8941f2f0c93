#!/usr/bin/env bash
# `make bench`: runs every benchmark whose figure an issue asks for, keeps the raw
# `go test -bench` output in test/results/bench/ (git-ignored), and regenerates
# BENCHMARKS.md from it with scripts/benchreport.
#
# Each job's command is run through eval from the very string that is written into
# the report, so the command printed beside a figure is the one that produced it.
# Ratios come from benchmarks that measure both sides interleaved in one process.
#
# Knobs (environment):
#   BENCH_QUICK=1   fewer repetitions and no 3 GB external-data model (about half the time)
#   BENCH_ONLY=a,b  rerun only these job ids; the other jobs' last results are kept
#   BENCH_OUT=FILE  where the report goes (default BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export ORT_LIB=${ORT_LIB:-$root/third_party/onnxruntime/current/libonnxruntime.so.1}
[[ -f $ORT_LIB ]] || { echo "bench: ONNX Runtime not found at $ORT_LIB; run make setup" >&2; exit 1; }

# Benchmarks read LAYERMESH_BENCH_THREADS; a value left in the caller's environment
# would change figures without showing in their commands, which set it where needed.
unset LAYERMESH_BENCH_THREADS

out=test/results/bench
quick=${BENCH_QUICK:-0}
only=${BENCH_ONLY:-}
report=${BENCH_OUT:-BENCHMARKS.md}
mkdir -p "$out"
if [[ -z $only ]]; then
  rm -f "$out"/*.txt "$out"/*.json
fi

# q QUICK FULL: the value for this mode.
q() { if [[ $quick == 1 ]]; then echo "$1"; else echo "$2"; fi; }

json_str() { # a JSON string literal
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

failed=()
run_start=$(date +%s)
run_commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  run_commit+=" (with uncommitted changes in the working tree)"
fi
run_load=$(cut -d' ' -f1-3 /proc/loadavg)

# job ID COMMAND: runs COMMAND (a go test -bench line) and records its output and
# metadata under $out/ID.{txt,json}.
job() {
  local id=$1 cmd=$2
  if [[ -n $only && ",$only," != *",$id,"* ]]; then
    return 0
  fi
  echo "bench: [$id] $cmd"
  local t0 load0 rc attempt
  for attempt in 1 2 3; do
    t0=$(date +%s%N)
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    rc=0
    eval "$cmd" >"$out/$id.txt" 2>&1 || rc=$?
    # A package that does not compile yields no figure at all; in a working tree
    # that others are editing this is usually a moment's state, so wait and retry.
    if [[ $rc == 0 || $attempt == 3 ]] || ! grep -q '\[build failed\]\|\[setup failed\]' "$out/$id.txt"; then
      break
    fi
    echo "bench: [$id] did not build (attempt $attempt of 3); retrying in ${BENCH_BUILD_RETRY_S:-60} s" >&2
    sleep "${BENCH_BUILD_RETRY_S:-60}"
  done
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  {
    printf '{"id":%s,"command":%s,"exit":%d,"seconds":%d.%03d,' "$(json_str "$id")" "$(json_str "$cmd")" "$rc" $((ms / 1000)) $((ms % 1000))
    printf '"load_before":%s,"load_after":%s,"finished":%s}\n' "$(json_str "$load0")" \
      "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")" "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
  } >"$out/$id.json"
  if [[ $rc != 0 ]]; then
    failed+=("$id")
    echo "bench: [$id] FAILED (exit $rc); last lines of $out/$id.txt:" >&2
    tail -n 20 "$out/$id.txt" >&2
  else
    echo "bench: [$id] done in $((ms / 1000)) s"
  fi
}

# The fixed cost accel adds around one ORT run, and building the 12 x 768 GPT.
job accel-ort-run "go test -run '^\$' -bench '^BenchmarkORTRun\$' -benchtime 1s -count $(q 1 3) -benchmem ./accel/ort/"
job modelgen-gpt2 "go test -run '^\$' -bench '^BenchmarkBuildGPT2Small\$' -benchtime 1x -count $(q 1 3) -benchmem ./partition/modelgen/"

# HTTP inference path (binary and JSON) against a direct accel call, 12 x 768 GPT at
# 1x128, interleaved in one run; and the same path on a model that computes nothing.
job api-infer "LAYERMESH_BENCH_THREADS=1 go test -run '^\$' -bench '^BenchmarkInfer\$' -benchtime $(q 5x 10x) -count 1 -benchmem -timeout 30m ./api/"
job api-infer-2t "LAYERMESH_BENCH_THREADS=2 go test -run '^\$' -bench '^BenchmarkInfer\$' -benchtime $(q 3x 6x) -count 1 -benchmem -timeout 30m ./api/"
job api-logits "go test -run '^\$' -bench '^BenchmarkInferLogitsTransport\$' -benchtime $(q 5x 10x) -count $(q 1 3) -benchmem -timeout 10m ./api/"

# Partitioner: analyse and write 3 stages of the 24 x 1024 GPT (child process, peak
# RSS); and, full runs only, a 36 x 1280 GPT over 2 GiB with external data.
job partition-gpt-large "go test -run '^\$' -bench '^BenchmarkPartitionGPTLarge\$' -benchtime 1x -count $(q 1 3) -timeout 20m ./partition/"
if [[ $quick != 1 ]]; then
  job partition-gpt-xl "go test -run '^\$' -bench '^BenchmarkPartitionGPTXL\$' -benchtime 1x -count 1 -timeout 30m ./partition/"
fi

# Stage RPC of one hidden state and 25.7 MB tensors, each path against
# raw loopback TCP in the same run; in one process and across two processes.
job mesh-stage-rpc "go test -run '^\$' -bench '^BenchmarkStageRPC_1x128x768\$' -benchtime $(q 200x 500x) -count $(q 1 3) -benchmem -timeout 10m ./mesh/"
job mesh-throughput "go test -run '^\$' -bench '^BenchmarkThroughput\$' -benchtime $(q 10x 20x) -count $(q 1 3) -benchmem -timeout 15m ./mesh/"
job mesh-throughput-processes "go test -run '^\$' -bench '^BenchmarkThroughputProcesses\$' -benchtime $(q 10x 20x) -count $(q 1 3) -benchmem -timeout 15m ./mesh/"
# One decode step's hop to another process (a 3 KiB hidden state), hot and after the
# peer computed for 10 ms, against raw loopback TCP to the same process.
job mesh-decode-hop "go test -run '^\$' -bench '^BenchmarkDecodeHopProcesses\$' -benchtime $(q 200x 1000x) -count $(q 1 3) -timeout 10m ./mesh/"

# Leader failover of a 3-node cluster with the default Raft timings;
# and the cost of a committed write and of a linearizable read.
job consensus-failover "go test -run '^\$' -bench '^BenchmarkLeaderFailover\$' -benchtime $(q 3x 10x) -count 1 -timeout 10m ./consensus/"
job consensus-apply "go test -run '^\$' -bench '^(BenchmarkApply|BenchmarkLinearizableRead)\$' -benchtime $(q 200x 500x) -count 1 -timeout 10m ./consensus/"

# Split serving, real meshnode processes on the 12 x 768 GPT: 3-stage split against
# one node, requests interleaved, with 1 and 2 intra-op threads per node, and the
# split's deploy; pipeline parallelism, 2 taskset-pinned nodes against 1; failover of a
# killed stage holder, measured by its system test, whose figures are in its -v log.
job split-latency-1t "LAYERMESH_BENCH_THREADS=1 go test -run '^\$' -bench '^BenchmarkSplitVsWhole\$' -benchtime $(q 1x 10x) -count 1 -timeout 20m ./test/split/"
job split-latency-2t "LAYERMESH_BENCH_THREADS=2 go test -run '^\$' -bench '^BenchmarkSplitVsWhole\$' -benchtime $(q 1x 10x) -count 1 -timeout 20m ./test/split/"
job split-pipeline "go test -run '^\$' -bench '^BenchmarkSplitPipelineParallel\$' -benchtime $(q 1x 12x) -count 1 -timeout 20m ./test/split/"
job split-failover "go test -run '^TestSplitStageHolderKilled\$' -count 1 -v -timeout 15m ./test/split/"

# Generation, real meshnode processes on the 12 x 768 GPT with past: per-token latency,
# time to first token and a full recomputation of context 128, 3-stage split against one
# node, interleaved; tokens/s of 4 sessions on 2 pinned nodes against 1 (at least 3
# generations per session and segment whatever -benchtime, so 1x is the full run).
job gen-latency-1t "LAYERMESH_BENCH_THREADS=1 go test -run '^\$' -bench '^BenchmarkGenerateSplitVsWhole\$' -benchtime $(q 1x 10x) -count 1 -timeout 20m ./test/split/"
# Decode steps in one process with the state held in ONNX Runtime against copied out
# into Go memory and back, interleaved.
job gen-state-held "LAYERMESH_BENCH_THREADS=1 go test -run '^\$' -bench '^BenchmarkDecodeStateHeldVsCopied\$' -benchtime $(q 2x 10x) -count 1 -timeout 20m ./test/split/"
# The stall of a generation whose stage holder is killed mid-stream, measured by its
# system test, whose figures are in its -v log.
job gen-failover "go test -run '^TestGenerationAcrossMeshnodes\$' -count 1 -v -timeout 15m ./test/gen/"
job gen-pipeline "go test -run '^\$' -bench '^BenchmarkGeneratePipelineParallel\$' -benchtime 1x -count 1 -timeout 30m ./test/split/"
# The two stages of the pipelined generation at the planner's cut and the cuts next to
# it, in one process: one after the other, and side by side on the two cores.
job gen-stage-cuts "go test -run '^\$' -bench '^BenchmarkDecodeStageCuts\$' -benchtime 1x -count 1 -timeout 20m ./test/split/"
# Test-set accuracy of the Fashion-MNIST CNN after each compression, from the
# accuracy test's -v log.
job compress-accuracy "go test -run '^TestFashionMNISTAccuracyAfterCompression\$' -count 1 -v -timeout 20m ./compress/"
# Decode batching (--max-batch 4) against steps run alone, 4 sessions on one pinned node.
job gen-batching "go test -run '^\$' -bench '^BenchmarkGenerateBatching\$' -benchtime 1x -count 1 -timeout 30m ./test/split/"
# 4 sessions entering at one node of a 2-replica deployment against one node alone.
job gen-replicas-one-entry "go test -run '^\$' -bench '^BenchmarkGenerateReplicasOneEntry\$' -benchtime 1x -count 1 -timeout 30m ./test/split/"
# What ONNX Runtime alone takes for a decode step of batches of 1 to 4 sessions: the
# floor under a batching stage's step.
job gen-batch-run "go test -run '^\$' -bench '^BenchmarkDecodeBatchRun\$' -benchtime 1x -count 1 -timeout 20m ./test/split/"

# Compression: the 12 x 768 GPT compressed to int8, int4 and dynamic int8 (size, time and
# peak memory of compressing, top-1 agreement) and each variant's 1x128 forward pass and
# with-past decode step interleaved with float32; the Fashion-MNIST CNN, batch 32, static
# int8 and pruned variants interleaved with float32. Both on 1 intra-op thread.
job compress-gpt "go test -run '^\$' -bench '^BenchmarkGPT2Small\$' -benchtime $(q 3x 10x) -count 1 -timeout 60m ./compress/"
job compress-cnn "go test -run '^\$' -bench '^BenchmarkFashionCNN\$' -benchtime $(q 100x 300x) -count $(q 1 3) -timeout 20m ./compress/"

# Speed scores of two native nodes and one arm64 node under qemu-user (a sanity figure),
# from the mixed-mesh system test's -v log; needs the arm64 build (make build-arm64).
job arm64-speed "make build-arm64 >/dev/null && go test -tags arm64emu -run '^TestMixedMeshGivesEmulatedNodeTheLightStage\$' -count 1 -v -timeout 10m ./test/arm64/"

run_secs=$(( $(date +%s) - run_start ))
{
  printf '{"quick":%s,"only":%s,"commit":%s,"seconds":%d,"load_start":%s,"load_end":%s,"procs":%d,"finished":%s}\n' \
    "$([[ $quick == 1 ]] && echo true || echo false)" "$(json_str "$only")" "$(json_str "$run_commit")" "$run_secs" \
    "$(json_str "$run_load")" "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")" "$(nproc)" \
    "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
} >"$out/run.json"

echo "bench: writing $report"
go run ./scripts/benchreport -dir "$out" -out "$report" -ort-lib "$ORT_LIB"

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "bench: FAILED: ${failed[*]} (see $out/<id>.txt; the report marks them)" >&2
  exit 1
fi
echo "bench: done in $run_secs s"
