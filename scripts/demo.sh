#!/usr/bin/env bash
# The single-node demo (`make demo`): generate a GPT-style model with meshctl, serve
# it with one meshnode on a loopback port, wait until it is ready, ask it for the
# logits of a few tokens with `meshctl infer`, and stop the node cleanly.
#
# Knobs (environment): DEMO_LAYERS (default 4), DEMO_DIM (256), DEMO_KEEP=1 keeps the
# work folder (model, data dir, node log) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

for b in bin/meshnode bin/meshctl; do
  [[ -x $b ]] || { echo "demo: $b missing; run make build" >&2; exit 1; }
done

work=$(mktemp -d -t layermesh-demo.XXXXXX)
node_pid=""
cleanup() {
  if [[ -n $node_pid ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  if [[ ${DEMO_KEEP:-0} == 1 ]]; then echo "demo: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== 1. generate a GPT-style model (${DEMO_LAYERS:-4} layers, width ${DEMO_DIM:-256}, GPT-2 vocabulary)"
mkdir -p "$work/models"
bin/meshctl gen-model gpt --layers "${DEMO_LAYERS:-4}" --dim "${DEMO_DIM:-256}" --context 128 -o "$work/models/gpt.onnx"

echo "== 2. start meshnode on a free loopback port"
bin/meshnode --data-dir "$work/data" --model-dir "$work/models" --http 127.0.0.1:0 \
  --name demo --accel auto --log-format text >"$work/meshnode.log" 2>&1 &
node_pid=$!
# The node writes its bound address to <data-dir>/http.addr as soon as it listens.
for _ in $(seq 1 300); do
  [[ -s $work/data/http.addr ]] && break
  if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "demo: meshnode exited; its log:" >&2; cat "$work/meshnode.log" >&2; exit 1
  fi
  sleep 0.1
done
[[ -s $work/data/http.addr ]] || { echo "demo: meshnode wrote no http.addr" >&2; cat "$work/meshnode.log" >&2; exit 1; }
export LAYERMESH_ADDR
LAYERMESH_ADDR=$(cat "$work/data/http.addr")
echo "meshnode pid $node_pid listening on http://$LAYERMESH_ADDR"

echo "== 3. wait until ready, then the node's status"
bin/meshctl status --wait 60s --token-file "$work/data/admin.token"

echo "== 4. meshctl infer: logits for the tokens of \"The quick brown fox\""
bin/meshctl infer gpt --input input_ids=464,2068,7586,21831 --shape input_ids=1x4 --max-values 8

echo "== 5. stop the node (SIGTERM: drains HTTP, closes sessions)"
kill -TERM "$node_pid"
wait "$node_pid"
node_pid=""
tail -n 2 "$work/meshnode.log"
echo "demo: ok"
