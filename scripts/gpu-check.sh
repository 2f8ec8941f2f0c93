#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: runs the built binaries with ONNX
# Runtime's CUDA plugin and writes a GPU section for BENCHMARKS.md. It needs no network
# and no Go toolchain: prebuilt binaries, the GPU ORT build (make setup-gpu, or the parts
# of make gpu-bundle) and, for the CUDA 13 / cuDNN 9 libraries, either the system's or
# those of python3's nvidia-* wheels (torch's), which it finds itself.
#
#   scripts/gpu-check.sh [BIN_DIR [GPU_ORT_DIR [OUT_DIR]]]
#     BIN_DIR      meshnode and meshctl (default bin, env BIN_DIR)
#     GPU_ORT_DIR  libonnxruntime.so.1 and libonnxruntime_providers_cuda.so of ONE ORT
#                  version; a plugin in parts (*.xz.part-*) is joined first
#                  (default third_party/onnxruntime-gpu/current, env GPU_ORT_DIR)
#     OUT_DIR      logs and BENCHMARKS-gpu.md (default gpu-check-out, env OUT_DIR)
#   env CUDA_LIB_DIRS  extra folders for LD_LIBRARY_PATH, colon-separated
#   env SEQ            tokens per request (default 64), REQUESTS (default 50)
#   env DRY_RUN_CPU=1  exercises the script's plumbing on a machine without a GPU: every
#                      "GPU" node runs --accel cpu on gpt-tiny; the report says so and
#                      the exit status is 3 (nothing measured) whatever happens
#
# Checks, each against the same 12 x 768 GPT (meshctl gen-model gpt, deterministic):
#  1. whole model on the GPU against ORT on the CPU (the same core, --accel cpu):
#     max relative error <= 1e-3 with TF32 (the CUDA provider's default), <= 1e-5
#     with --ep-option cuda:use_tf32=0;
#  2. latency of a direct call (the node's own inference time, from /metrics) and
#     over HTTP (meshctl bench, binary tensors);
#  3. three GPU nodes, the model split in 3 stages, against the CPU reference;
#  4. a mixed mesh of 1 GPU node and 2 CPU nodes: the planner must give the GPU node
#     most of the model (its stage bytes exceed the CPU nodes' together); the plan and
#     per-stage timings are printed.
# Exit 0: all checks pass; 1: a check failed; 3: no GPU here, nothing measured.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
BIN_DIR=${1:-${BIN_DIR:-bin}}
GPU_ORT_DIR=${2:-${GPU_ORT_DIR:-third_party/onnxruntime-gpu/current}}
OUT_DIR=${3:-${OUT_DIR:-gpu-check-out}}
SEQ=${SEQ:-64}
REQUESTS=${REQUESTS:-50}
DRY_RUN_CPU=${DRY_RUN_CPU:-0}
GPU_ACCEL=cuda MODEL_KIND=gpt VOCAB=50257
if [ "$DRY_RUN_CPU" = 1 ]; then GPU_ACCEL=cpu MODEL_KIND=gpt-tiny VOCAB=97 SEQ=16 REQUESTS=5; fi
BIN_DIR=$(cd "$BIN_DIR" && pwd) || { echo "gpu-check: no $BIN_DIR" >&2; exit 1; }
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
report="$OUT_DIR/BENCHMARKS-gpu.md"
work="$OUT_DIR/work"
rm -rf "$work" && mkdir -p "$work"
meshnode="$BIN_DIR/meshnode"
meshctl="$BIN_DIR/meshctl"

log() { echo "gpu-check: $*" >&2; }
not_measured() {
  log "not measured: $*"
  { echo "## GPU (NVIDIA, ONNX Runtime CUDA plugin)"; echo; echo "Not measured: $*."; } >"$report"
  exit 3
}

# --- preflight: a GPU, the libraries, the binaries ---------------------------------
[ -x "$meshnode" ] && [ -x "$meshctl" ] || { log "no meshnode/meshctl in $BIN_DIR"; exit 1; }
if [ "$DRY_RUN_CPU" != 1 ] && ! { [ -e /dev/nvidiactl ] || nvidia-smi -L >/dev/null 2>&1; }; then
  not_measured "no NVIDIA GPU on $(hostname) (no /dev/nvidiactl, nvidia-smi finds none)"
fi
GPU_ORT_DIR=$(cd "$GPU_ORT_DIR" 2>/dev/null && pwd) || not_measured "no GPU ONNX Runtime folder ($GPU_ORT_DIR): run make setup-gpu"
plugin="$GPU_ORT_DIR/libonnxruntime_providers_cuda.so"
if [ ! -f "$plugin" ] && compgen -G "$plugin.xz.part-*" >/dev/null; then
  log "joining $(ls "$plugin".xz.part-* | wc -l) parts of the CUDA plugin"
  cat "$plugin".xz.part-* | xz -d >"$plugin.tmp" && mv "$plugin.tmp" "$plugin"
fi
core="$GPU_ORT_DIR/libonnxruntime.so.1"
if [ ! -e "$core" ] && [ -f "$core.xz" ]; then xz -dk "$core.xz"; fi
[ -e "$core" ] || core="$GPU_ORT_DIR/libonnxruntime.so"
[ -f "$core" ] && [ -f "$plugin" ] || not_measured "$GPU_ORT_DIR lacks libonnxruntime.so(.1) or libonnxruntime_providers_cuda.so"

# CUDA 13 and cuDNN 9: python's nvidia wheels (torch's, onnxruntime-gpu's) and the
# CUDA toolkit's folder, besides what ldconfig knows.
libdirs=${CUDA_LIB_DIRS:-}
if command -v python3 >/dev/null; then
  pydirs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
)
  [ -n "$pydirs" ] && libdirs="${libdirs:+$libdirs:}$pydirs"
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64; do [ -d "$d" ] && libdirs="${libdirs:+$libdirs:}$d"; done
export LD_LIBRARY_PATH="${libdirs:+$libdirs:}${LD_LIBRARY_PATH:-}"
log "plugin sha256 $(sha256sum "$plugin" | cut -c1-64) (setup-gpu pins 56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037 for ORT 1.29.0)"
log "plugin needs: $(readelf -d "$plugin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -E 'cu|nv' | tr '\n' ' ')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu-check: gpu: /' >&2

# --- helpers ------------------------------------------------------------------------
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

# start NAME ACCEL [flags...]: starts a node with data dir $work/NAME; sets $addr.
start() {
  local name=$1 acc=$2; shift 2
  local dir="$work/$name"
  mkdir -p "$dir"
  "$meshnode" --ort-lib "$core" --accel "$acc" --data-dir "$dir" --name "$name" --http 127.0.0.1:0 \
    --log-format text "$@" >"$OUT_DIR/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    [ -s "$dir/http.addr" ] && curl -sf "http://$(cat "$dir/http.addr")/v2/health/live" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { log "$name exited:"; tail -5 "$OUT_DIR/$name.log" >&2; return 1; }
    sleep 0.2
  done
  addr=$(cat "$dir/http.addr")
}
stop_all() { cleanup; pids=(); }
wait_ready() { # addr seconds
  for _ in $(seq $(( $2 * 5 ))); do curl -sf "http://$1/v2/health/ready" >/dev/null && return 0; sleep 0.2; done
  log "$1 not ready after $2 s: $(curl -s "http://$1/v2/health/ready")"; return 1
}
py() { python3 "$work/helper.py" "$@"; }

cat >"$work/helper.py" <<'EOF'
# Deterministic token ids, KServe v2 JSON inference, comparison, /metrics reading.
import json, sys, urllib.request, array, re

def infer(addr, model, ids_file):
    ids = json.load(open(ids_file))[0]
    seq = len(ids)
    body = json.dumps({"inputs": [{"name": "input_ids", "shape": [1, seq], "datatype": "INT64", "data": ids}]}).encode()
    req = urllib.request.Request(f"http://{addr}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)["outputs"][0]
    return out["data"]

def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=30).read().decode()
    vals = {}
    for line in text.splitlines():
        m = re.match(re.escape(name) + r"(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            vals[m.group(1) or ""] = float(m.group(2))
    return vals

cmd = sys.argv[1]
if cmd == "infer":          # addr model ids.json out.bin
    array.array("f", infer(sys.argv[2], sys.argv[3], sys.argv[4])).tofile(open(sys.argv[5], "wb"))
elif cmd == "compare":      # ref.bin got.bin -> max |got-ref| / max |ref|
    a, b = array.array("f"), array.array("f")
    a.frombytes(open(sys.argv[2], "rb").read()); b.frombytes(open(sys.argv[3], "rb").read())
    if len(a) != len(b) or not a:
        print("inf"); sys.exit()
    scale = max(abs(x) for x in a)
    print("%.3g" % (max(abs(x - y) for x, y in zip(a, b)) / scale))
elif cmd == "mean":         # addr histogram -> mean seconds per series label set
    s, c = metric(sys.argv[2], sys.argv[3] + "_sum"), metric(sys.argv[2], sys.argv[3] + "_count")
    for k in sorted(s):
        if c.get(k):
            print("%s %.2f ms (%d calls)" % (k or "-", 1000 * s[k] / c[k], c[k]))
elif cmd == "gauge":        # addr name -> sum of the gauge's series
    print(int(sum(metric(sys.argv[2], sys.argv[3]).values())))
EOF

fail=0
results=()
record() { results+=("$1"); log "$1"; }
le() { python3 -c "import sys; sys.exit(0 if float('$1') <= float('$2') else 1)"; }

# --- the model ----------------------------------------------------------------------
mkdir -p "$work/models"
"$meshctl" gen-model "$MODEL_KIND" -o "$work/models/gpt.onnx" >/dev/null || { log "gen-model failed"; exit 1; }
python3 -c "import json,random; r=random.Random(7); json.dump([[r.randrange($VOCAB) for _ in range($SEQ)]], open('$work/ids.json','w'))"
model_bytes=$(stat -c %s "$work/models/gpt.onnx")
log "model: meshctl gen-model $MODEL_KIND, $model_bytes bytes, $SEQ tokens per request"

# --- 1. CPU reference ---------------------------------------------------------------
start cpu-ref cpu --model-dir "$work/models" || exit 1
wait_ready "$addr" 300 || exit 1
py infer "$addr" gpt "$work/ids.json" "$work/ref.bin" || { log "CPU inference failed"; exit 1; }
cpu_http=$(LAYERMESH_ADDR="http://$addr" "$meshctl" bench gpt --input "input_ids=@$work/ids.json" --shape "input_ids=1x$SEQ" --datatype input_ids=INT64 --requests 5 2>/dev/null | grep -o 'p50 [0-9.]*' || true)
stop_all

# --- 1+2. whole model on the GPU, TF32 on and off ---------------------------------------
for mode in tf32 fp32; do
  flags=(--model-dir "$work/models")
  tol=1e-3
  if [ $mode = fp32 ]; then flags+=(--ep-option cuda:use_tf32=0); tol=1e-5; fi
  start "gpu-$mode" "$GPU_ACCEL" "${flags[@]}" || { record "GPU ($mode): node did not start"; fail=1; continue; }
  wait_ready "$addr" 300 || { fail=1; stop_all; continue; }
  grep -m1 'onnx runtime ready' "$OUT_DIR/gpu-$mode.log" >&2
  if py infer "$addr" gpt "$work/ids.json" "$work/gpu-$mode.bin"; then
    err=$(py compare "$work/ref.bin" "$work/gpu-$mode.bin")
    if le "$err" "$tol"; then record "whole model on the GPU ($mode): max rel error $err <= $tol"
    else record "FAIL whole model on the GPU ($mode): max rel error $err > $tol"; fail=1; fi
  else record "FAIL whole model on the GPU ($mode): inference failed"; fail=1; fi
  if [ $mode = tf32 ]; then
    bench=$(LAYERMESH_ADDR="http://$addr" "$meshctl" bench gpt --input "input_ids=@$work/ids.json" --shape "input_ids=1x$SEQ" --datatype input_ids=INT64 --requests "$REQUESTS" 2>&1)
    echo "$bench" >"$OUT_DIR/bench-gpu-whole.txt"
    record "GPU whole model, HTTP (meshctl bench, $REQUESTS requests): $(echo "$bench" | grep -o 'p50 [0-9.]*  p90 [0-9.]*  p99 [0-9.]*' | head -1) ms"
    record "GPU whole model, direct call (node's layermesh_infer_duration_seconds mean): $(py mean "$addr" layermesh_infer_duration_seconds | head -1)"
    [ -n "$cpu_http" ] && record "CPU whole model, HTTP: $cpu_http ms (5 requests)"
    curl -s "http://$addr/v2" >"$OUT_DIR/v2-gpu.json"
    curl -s "http://$addr/metrics" | grep -E '^layermesh_(accel|gpu)' >"$OUT_DIR/metrics-gpu.txt"
    record "GET /v2: $(cat "$OUT_DIR/v2-gpu.json")"
  fi
  stop_all
done

# --- 3 and 4: clusters ------------------------------------------------------------------
# cluster NAME ACCEL... : node 0 bootstraps, the others join it.
cluster() {
  local prefix=$1; shift
  local i=0 seed="" secret=""
  addrs=()
  for acc in "$@"; do
    local name="$prefix$i"
    local flags=(--listen /ip4/127.0.0.1/tcp/0 --gossip-port 0 --no-mdns)
    if [ $i = 0 ]; then flags+=(--bootstrap); else flags+=(--join "$seed" --cluster-secret-file "$secret"); fi
    start "$name" "$acc" "${flags[@]}" || return 1
    addrs+=("$addr")
    if [ $i = 0 ]; then
      for _ in $(seq 300); do [ -s "$work/$name/p2p.addr" ] && [ -s "$work/$name/cluster.secret" ] && break; sleep 0.2; done
      seed=$(cat "$work/$name/p2p.addr"); secret="$work/$name/cluster.secret"
    fi
    i=$((i + 1))
  done
  for a in "${addrs[@]}"; do wait_ready "$a" 300 || return 1; done
}
deploy() { # prefix stages
  LAYERMESH_ADDR="http://${addrs[0]}" LAYERMESH_TOKEN_FILE="$work/${1}0/admin.token" "$meshctl" deploy "$work/models/gpt.onnx" \
    --name gpt --stages "$2" --replicas 1 --quiet --wait 10m
}
stage_report() { # prefix label...
  local prefix=$1 i=0
  LAYERMESH_ADDR="http://${addrs[0]}" LAYERMESH_TOKEN_FILE="$work/${prefix}0/admin.token" "$meshctl" plan gpt | tee -a "$OUT_DIR/plans.txt" >&2
  LAYERMESH_ADDR="http://${addrs[0]}" LAYERMESH_TOKEN_FILE="$work/${prefix}0/admin.token" "$meshctl" nodes | tee -a "$OUT_DIR/plans.txt" >&2
  for a in "${addrs[@]}"; do
    local bytes speed
    bytes=$(py gauge "$a" layermesh_stage_memory_bytes)
    speed=$(grep -m1 'speed score' "$OUT_DIR/$prefix$i.log" | grep -o 'gflops=[0-9.]*')
    record "  $prefix$i: $(grep -m1 'onnx runtime ready' "$OUT_DIR/$prefix$i.log" | grep -o 'provider=[a-z]*') $speed stage bytes $bytes; stage compute: $(py mean "$a" layermesh_stage_compute_duration_seconds | tr '\n' ';')"
    echo "$bytes" >"$work/bytes-$prefix$i"
    i=$((i + 1))
  done
}

log "3 GPU nodes, 3 stages"
if cluster g "$GPU_ACCEL" "$GPU_ACCEL" "$GPU_ACCEL" && deploy g 3; then
  py infer "${addrs[0]}" gpt "$work/ids.json" "$work/split.bin" && err=$(py compare "$work/ref.bin" "$work/split.bin") || err=inf
  if le "$err" 1e-3; then record "3 GPU nodes, 3 stages: max rel error $err against the CPU <= 1e-3"
  else record "FAIL 3 GPU nodes, 3 stages: max rel error $err"; fail=1; fi
  bench=$(LAYERMESH_ADDR="http://${addrs[0]}" "$meshctl" bench gpt --input "input_ids=@$work/ids.json" --shape "input_ids=1x$SEQ" --datatype input_ids=INT64 --requests "$REQUESTS" 2>&1)
  echo "$bench" >"$OUT_DIR/bench-gpu-split.txt"
  record "3 GPU nodes, HTTP: $(echo "$bench" | grep -o 'p50 [0-9.]*  p90 [0-9.]*  p99 [0-9.]*' | head -1) ms"
  stage_report g
else record "FAIL 3 GPU nodes: cluster or deploy failed (see $OUT_DIR/g*.log)"; fail=1; fi
stop_all

log "mixed mesh: 1 GPU node, 2 CPU nodes, 3 stages"
if cluster m "$GPU_ACCEL" cpu cpu && deploy m 3; then
  py infer "${addrs[0]}" gpt "$work/ids.json" "$work/mixed.bin" && err=$(py compare "$work/ref.bin" "$work/mixed.bin") || err=inf
  le "$err" 1e-3 && record "mixed mesh: max rel error $err <= 1e-3" || { record "FAIL mixed mesh: max rel error $err"; fail=1; }
  bench=$(LAYERMESH_ADDR="http://${addrs[0]}" "$meshctl" bench gpt --input "input_ids=@$work/ids.json" --shape "input_ids=1x$SEQ" --datatype input_ids=INT64 --requests "$REQUESTS" 2>&1)
  echo "$bench" >"$OUT_DIR/bench-mixed.txt"
  record "mixed mesh, HTTP: $(echo "$bench" | grep -o 'p50 [0-9.]*  p90 [0-9.]*  p99 [0-9.]*' | head -1) ms"
  stage_report m
  g=$(cat "$work/bytes-m0"); c=$(( $(cat "$work/bytes-m1") + $(cat "$work/bytes-m2") ))
  if [ "$g" -gt "$c" ]; then record "mixed mesh: the GPU node holds $g stage bytes, the CPU nodes $c: most of the model is on the GPU"
  else record "FAIL mixed mesh: the GPU node holds $g stage bytes, the CPU nodes $c"; fail=1; fi
else record "FAIL mixed mesh: cluster or deploy failed (see $OUT_DIR/m*.log)"; fail=1; fi
stop_all

# --- report -----------------------------------------------------------------------------
{
  echo "## GPU (NVIDIA, ONNX Runtime CUDA plugin)"
  echo
  [ "$DRY_RUN_CPU" = 1 ] && echo "DRY RUN ON THE CPU (DRY_RUN_CPU=1): no GPU was used; these are not GPU figures." && echo
  echo "Measured $(date -u +%Y-%m-%d) by \`scripts/gpu-check.sh\` on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1),"
  echo "$(nproc) CPU cores; ONNX Runtime $(grep -m1 -o 'version=[0-9.]*' "$OUT_DIR/gpu-tf32.log" | cut -d= -f2) with \`$(basename "$plugin")\` as a plugin;"
  echo "model: \`meshctl gen-model $MODEL_KIND\` ($model_bytes bytes), $SEQ tokens per request."
  echo
  for r in "${results[@]}"; do echo "- $r"; done
  echo
  echo "Plans and nodes:"
  echo
  echo '```'
  cat "$OUT_DIR/plans.txt" 2>/dev/null
  echo '```'
} >"$report"
log "wrote $report"
[ $fail = 0 ] && log "all checks passed" || log "some checks FAILED"
if [ "$DRY_RUN_CPU" = 1 ]; then log "dry run on the CPU: not measured"; exit 3; fi
exit $fail
