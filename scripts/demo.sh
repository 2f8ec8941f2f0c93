#!/usr/bin/env bash
# The main demo (`make demo`): split inference over a mesh of three local nodes.
#
#  1. generate a 12 x 768 GPT (random weights, GPT-2 vocabulary, ~470 MiB)
#  2. start three meshnode processes on loopback: node0 bootstraps a cluster, node1 and
#     node2 join it with its cluster secret (each its own data dir and free ports)
#  3. deploy the model through node1 in 3 pipeline stages x 2 replicas and print the plan
#  4. ask for the next token of "The quick brown fox" through every node
#  5. check those answers against one ONNX Runtime session on the whole model
#  6. text generation: deploy a small with-past GPT trained here on Debian's fortune
#     cookies (models/fortune-gpt.safetensors, scripts/train_fortune_gpt.py) with its
#     tokenizer (GPT-2's first 8,000 merges) in 3 stages x 2 replicas and stream 200
#     seeded tokens of fortunes
#  7. SIGKILL the Raft leader (it also holds stages) while queries keep running
#     through the two survivors and the same generation streams through one of them;
#     show zero failed queries, the stream equal to the undisturbed one, the new
#     leader and the placement healed back to 2 ready replicas per stage
#  8. stop the survivors cleanly (SIGTERM) and remove the work folder
#
# Node logs go to files in the work folder; on a failure their tails are printed.
# Knobs (environment): DEMO_LAYERS (default 12), DEMO_DIM (768), DEMO_KEEP=1 keeps the
# work folder (model, data dirs, logs) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# $EPOCHREALTIME and awk read and write decimal points.
export LC_ALL=C

for b in bin/meshnode bin/meshctl; do
  [[ -x $b ]] || { echo "demo: $b missing; run make build" >&2; exit 1; }
done
[[ -s third_party/tokenizers/gpt2/vocab.bpe ]] || { echo "demo: the GPT-2 tokenizer is missing; run make setup" >&2; exit 1; }

layers=${DEMO_LAYERS:-12}
dim=${DEMO_DIM:-768}
model_name=gpt
# GPT-2's token ids for "The quick brown fox" (the generated model has GPT-2's
# vocabulary size but random weights: its next-token guesses are not English; the point
# is that every path through the mesh gives the same ones as the whole model).
prompt_ids=464,2068,7586,21831
prompt_len=4
stages=3
replicas=2
max_diff=1e-4 # what the system tests require of the split against the whole model
# The generation part: a with-past GPT small enough to deploy in seconds, trained on
# fortune cookies (the weights are committed), its tokenizer (cut from GPT-2's, which
# make setup fetches) and one seeded sampling request.
gen_name=fortune
gen_weights=models/fortune-gpt.safetensors
gen_prompt="The secret of life is"
gen_args=(--max-tokens 200 --temperature 0.8 --top-k 50 --seed 9)

work=$(mktemp -d -t layermesh-demo.XXXXXX)
declare -a pids=() # node index -> pid while it runs ("" once stopped or killed)
whole_pid=""
gen_pid=""
load_pids=()
t0=$EPOCHREALTIME

# --- helpers ------------------------------------------------------------------------

now() { echo "$EPOCHREALTIME"; }
# since T: seconds since the timestamp T, one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
section() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

# ctl runs meshctl with the admin token node0 created (every node accepts it: the
# founders publish its hash through Raft).
ctl() { bin/meshctl "$@" --token-file "$work/node0/admin.token"; }
addr() { cat "$work/node$1/http.addr"; }

cleanup() {
  local rc=$?
  set +e
  touch "$work/stop"
  for p in "${load_pids[@]}" $gen_pid; do kill "$p" 2>/dev/null; done
  # The logs as they were at the failure, before the shutdown adds its own lines.
  if ((rc != 0 && rc != 130 && rc != 143)); then
    for log in "$work"/*.log; do
      [[ -f $log ]] || continue
      echo "--- last lines of $(basename "$log")" >&2
      tail -n 15 "$log" | cut -c1-400 >&2
    done
    [[ ${DEMO_KEEP:-0} == 1 ]] || echo "demo: DEMO_KEEP=1 keeps the work folder with the whole logs" >&2
  fi
  local live=()
  for p in "${pids[@]}" $whole_pid; do
    [[ -n $p ]] && kill -0 "$p" 2>/dev/null && { kill -TERM "$p" 2>/dev/null; live+=("$p"); }
  done
  # A node that does not stop within 20 s of SIGTERM is killed.
  for _ in $(seq 1 200); do
    local any=0
    for p in "${live[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
    ((any)) || break
    sleep 0.1
  done
  for p in "${live[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  if ((rc == 130 || rc == 143)); then
    echo "demo: interrupted; every node stopped" >&2
  fi
  if [[ ${DEMO_KEEP:-0} == 1 ]]; then echo "demo: kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_file FILE PID: waits up to 60 s for FILE (an address a node writes once it
# listens), giving up at once if the node exits.
wait_file() {
  for _ in $(seq 1 600); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || fail "node pid $2 exited before writing $(basename "$1")"
    sleep 0.1
  done
  fail "no $(basename "$1") after 60 s"
}

# start_node I FLAGS...: starts node I on free loopback ports (HTTP and libp2p from
# port 0, the bound ones are in http.addr and p2p.addr; memberlist on port 0 too, as
# nothing here restarts a node) with one ONNX Runtime thread per session (three nodes
# share this machine's cores) and 1 GiB for stages: enough for all three stages of the
# model on each of the two nodes left after the kill.
start_node() {
  local i=$1
  shift
  mkdir -p "$work/node$i"
  bin/meshnode --data-dir "$work/node$i" --name "node$i" \
    --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --gossip-port 0 --no-mdns \
    --threads 1 --mem-budget 1GiB --log-format text "$@" >"$work/node$i.log" 2>&1 &
  pids[i]=$!
  wait_file "$work/node$i/http.addr" "${pids[i]}"
  wait_file "$work/node$i/p2p.addr" "${pids[i]}"
}

# alive_count I: how many members node I sees alive.
alive_count() { ctl nodes --addr "$(addr "$1")" 2>/dev/null | awk '$2 == "alive"' | wc -l; }

# leader_of I: the leader node I names ("" when none).
leader_of() { ctl status --addr "$(addr "$1")" 2>/dev/null | awk '$1 == "leader" { print $2 }'; }

# ready_replicas I EXCLUDE [MODEL]: per stage of the model (default: the split GPT),
# the alive nodes other than EXCLUDE that node I reports serving it ready, e.g. "2 2 1"
# (one count per stage).
ready_replicas() {
  local version name=${3:-$model_name}
  version=$(ctl model "$name" --addr "$(addr "$1")" 2>/dev/null | awk '$1 == "version" { print $2 }')
  [[ -n $version ]] || { echo "?"; return; }
  ctl nodes --addr "$(addr "$1")" 2>/dev/null |
    awk -v ex="$2" -v pre="$name@$version/stage" -v n="$stages" '
      $2 == "alive" && $1 != ex {
        for (k = 0; k < n; k++) if (index($0, pre k " (ready)")) c[k]++
      }
      END { for (k = 0; k < n; k++) printf "%d%s", c[k], (k < n - 1 ? " " : "\n") }'
}

# infer ADDR OUT: asks ADDR for the logits of the prompt, writes them one per line to
# OUT and prints the round trip in milliseconds.
infer() {
  local a=$EPOCHREALTIME
  bin/meshctl infer "$model_name" --addr "$1" --input "input_ids=$prompt_ids" \
    --shape "input_ids=1x$prompt_len" --json --timeout 30s >"$2.json" || return 1
  local ms
  ms=$(awk -v a="$a" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
  tr -d ' \n\t' <"$2.json" | grep -o '"data":\[[^]]*\]' | head -n 1 |
    sed -e 's/^"data":\[//' -e 's/\]$//' | tr ',' '\n' >"$2"
  [[ -s $2 ]] || return 1
  echo "$ms"
}

# vocab FILE: the last dimension of the logits' shape in FILE.json.
vocab() { tr -d ' \n\t' <"$1.json" | grep -o '"shape":\[[^]]*\]' | head -n 1 | tr -d '"shape:[]' | awk -F, '{ print $NF }'; }

# top5 FILE: the five most likely next tokens (the last position's largest logits).
top5() {
  tail -n "$(vocab "$1")" "$1" | awk '{ print NR - 1, $1 }' | sort -k2,2 -g -r | head -n 5 |
    awk '{ printf "%s%s (%.3f)", (NR > 1 ? ", " : ""), $1, $2 } END { print "" }'
}

# diff_logits GOT WANT: the largest |got - want| / max(1, |want|) over all logits, the
# measure the system tests use.
diff_logits() {
  paste "$1" "$2" | awk '
    NF != 2 { bad = 1 }
    { d = $1 - $2; if (d < 0) d = -d; w = $2 < 0 ? -$2 : $2; if (w < 1) w = 1; d /= w; if (d > m) m = d }
    END { if (bad || NR == 0) print "inf"; else printf "%.3g\n", m }'
}
within() { awk -v d="$1" -v lim="$max_diff" 'BEGIN { exit !(d != "inf" && d + 0 <= lim + 0) }'; }

# metric_sum NAME I...: the sum of a Prometheus counter over nodes I... ("" without curl).
metric_sum() {
  command -v curl >/dev/null || return 0
  local name=$1 i
  shift
  for i in "$@"; do curl -s "http://$(addr "$i")/metrics" || true; done |
    awk -v n="$name" 'index($0, n) == 1 { s += $NF } END { printf "%.0f\n", s }'
}

# generate I OUT: streams the generation request through node I, one JSON event per
# line into OUT as the tokens come (every event names only the model, its version, a
# piece of text and, last, the finish reason and token counts: two runs of the same
# seeded request give the same file).
generate() {
  ctl generate "$gen_name" "$gen_prompt" "${gen_args[@]}" --json --timeout 2m --addr "$(addr "$1")" >"$2"
}

# gen_text FILE: the text of a generation's events (JSON escapes left as they are).
gen_text() { sed -n 's/.*"text_output":"\(\([^"\\]\|\\.\)*\)".*/\1/p' "$1" | tr -d '\n'; }

# gen_tokens FILE: the completion token count of a generation's last event.
gen_tokens() { grep -o '"completion_tokens":[0-9]*' "$1" | tail -n 1 | cut -d: -f2; }

# lines FILE: how many lines FILE has so far (0 while it does not exist).
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# wait_no_sessions I...: waits up to 10 s until nodes I... hold no generation session.
wait_no_sessions() {
  for _ in $(seq 1 100); do
    [[ $(metric_sum layermesh_sessions_active "$@") == 0 ]] && return 0
    sleep 0.1
  done
}

# --- the demo -------------------------------------------------------------------------

section "1. generate a GPT: $layers layers, width $dim, GPT-2 vocabulary (random weights)"
mkdir -p "$work/models"
model=$work/models/$model_name.onnx
bin/meshctl gen-model gpt --layers "$layers" --dim "$dim" --context 128 -o "$model"

section "2. start 3 meshnode processes on loopback (node0 bootstraps, node1 and node2 join it)"
t=$(now)
start_node 0 --bootstrap
wait_file "$work/node0/cluster.secret" "${pids[0]}"
seed=$(cat "$work/node0/p2p.addr")
for i in 1 2; do
  start_node "$i" --join "$seed" --cluster-secret-file "$work/node0/cluster.secret"
done
for i in 0 1 2; do
  ctl status --addr "$(addr "$i")" --wait 60s >/dev/null || fail "node$i not ready within 60 s"
done
for _ in $(seq 1 300); do
  [[ $(alive_count 0) == 3 && $(alive_count 1) == 3 && $(alive_count 2) == 3 ]] && break
  sleep 0.2
done
[[ $(alive_count 0) == 3 ]] || fail "node0 sees $(alive_count 0) alive members of 3 after 60 s"
for i in 0 1 2; do echo "node$i  pid ${pids[i]}  http://$(addr "$i")  $(cat "$work/node$i/p2p.addr")"; done
echo "cluster of 3 formed in $(since "$t") s; leader: $(leader_of 0)"
ctl nodes --addr "$(addr 0)"

section "3. deploy it through node1: $stages stages x $replicas replicas"
t=$(now)
ctl deploy "$model" --name "$model_name" --stages "$stages" --replicas "$replicas" --wait 2m --quiet --addr "$(addr 1)" ||
  fail "deploy"
echo "deployed, every stage answering, in $(since "$t") s"
# deploy --wait returns once each stage has one ready replica; the demo waits for all.
full=$(printf "$replicas %.0s" $(seq "$stages")) # "2 2 2": every stage at its replica count
full=${full% }
for _ in $(seq 1 240); do
  [[ $(ready_replicas 0 none) == "$full" ]] && break
  sleep 0.25
done
counts=$(ready_replicas 0 none)
[[ $counts == "$full" ]] || fail "ready replicas per stage $counts 60 s after the deploy, want $full"
echo "all $replicas replicas of each stage ready in $(since "$t") s"
moved=$(metric_sum layermesh_blob_served_bytes_total 0 1 2)
[[ -n $moved ]] && awk -v b="$moved" 'BEGIN { printf "stage blobs sent between nodes: %.1f MiB\n", b / 1048576 }'
echo
ctl plan "$model_name" --addr "$(addr 0)"
echo
ctl status --addr "$(addr 0)"

section "4. queries: the next token after \"The quick brown fox\" (ids $prompt_ids), through every node"
for i in 0 1 2; do
  ms=$(infer "$(addr "$i")" "$work/q$i") || fail "infer through node$i"
  echo "via node$i (${ms} ms round trip): top-5 next-token ids $(top5 "$work/q$i")"
done
echo "logits per answer: $(wc -l <"$work/q0") ($(tr -d ' \n\t' <"$work/q0.json" | grep -o '"shape":\[[^]]*\]' | head -n 1))"

section "5. the same question to one ONNX Runtime session on the whole model (a 4th, standalone meshnode)"
mkdir -p "$work/whole"
bin/meshnode --data-dir "$work/whole" --name whole --http 127.0.0.1:0 --model-dir "$work/models" \
  --threads 1 --log-format text >"$work/whole.log" 2>&1 &
whole_pid=$!
wait_file "$work/whole/http.addr" "$whole_pid"
bin/meshctl status --addr "$(cat "$work/whole/http.addr")" --wait 60s >/dev/null || fail "whole-model node not ready"
infer "$(cat "$work/whole/http.addr")" "$work/ref" >/dev/null || fail "infer on the whole model"
echo "whole model: top-5 next-token ids $(top5 "$work/ref")"
kill -TERM "$whole_pid"
wait "$whole_pid" || true
whole_pid=""
for i in 0 1 2; do
  d=$(diff_logits "$work/q$i" "$work/ref")
  within "$d" || fail "the answer via node$i differs from the whole model by $d (limit $max_diff)"
  echo "via node$i: equal to the whole model, max relative diff $d over $(wc -l <"$work/ref") logits (limit $max_diff)"
done

section "6. text generation: a with-past GPT (4 x 128) trained on fortune cookies"
gen_model=$work/gen/$gen_name.onnx
gen_tokenizer=$work/gen/tokenizer
mkdir -p "$work/gen"
bin/meshctl gen-model gpt --with-past --weights "$gen_weights" -o "$gen_model"
go run ./scripts/corpusids -merges 8000 -tokenizer-out "$gen_tokenizer" || fail "the fortune model's tokenizer"
t=$(now)
ctl deploy "$gen_model" --name "$gen_name" --stages "$stages" --replicas "$replicas" --tokenizer "$gen_tokenizer" \
  --wait 2m --quiet --addr "$(addr 2)" || fail "deploy of the generating model"
for _ in $(seq 1 240); do
  [[ $(ready_replicas 0 none "$gen_name") == "$full" ]] && break
  sleep 0.25
done
counts=$(ready_replicas 0 none "$gen_name")
[[ $counts == "$full" ]] || fail "ready replicas per stage of $gen_name: $counts 60 s after the deploy, want $full"
echo "deployed with its tokenizer in $stages stages x $replicas replicas in $(since "$t") s"
t=$(now)
generate 0 "$work/gen_ref.jsonl" || fail "generate through node0"
echo "meshctl generate $gen_name \"$gen_prompt\" ${gen_args[*]} through node0: $(gen_tokens "$work/gen_ref.jsonl") tokens streamed in $(since "$t") s"
echo "text (a 1.9M-parameter model trained for minutes on 2 cores: fortune-like, not wise):"
printf '%s%b' "$gen_prompt" "$(gen_text "$work/gen_ref.jsonl" | sed 's/\\"/"/g')" | head -c 700 || true
echo
tail -n 1 "$work/gen_ref.jsonl"

# The leader as node1 sees it; on a loaded machine an election may be under way.
for _ in $(seq 1 100); do
  leader=$(leader_of 1)
  [[ $leader =~ ^node([0-2])$ ]] && break
  sleep 0.1
done
[[ $leader =~ ^node([0-2])$ ]] || fail "no leader named after 10 s (got \"$leader\")"
victim=${BASH_REMATCH[1]}
survivors=()
for i in 0 1 2; do ((i != victim)) && survivors+=("$i"); done
held=$(ctl nodes --addr "$(addr "${survivors[0]}")" | awk -v n="node$victim" '$1 == n' |
  grep -o "$model_name@[^/]*/stage[0-9]* (ready)" | sed 's/.*stage//' | tr -dc '0-9\n' | paste -sd, -)
section "7. kill -9 node$victim (the Raft leader, serving stages ${held:-none}) while queries go through node${survivors[0]} and node${survivors[1]}"
# Two clients query back to back, one through each survivor, from 1 s before the kill
# until 2 s after the placement has healed; each answer is checked against the whole model.
load() { # I: queries through node I until $work/stop exists; a "T ok MS" or "T FAIL WHY" line each
  local i=$1 ms d
  while [[ ! -e $work/stop ]]; do
    if ! ms=$(infer "$(addr "$i")" "$work/load$i" 2>"$work/load$i.err"); then
      echo "$EPOCHREALTIME FAIL via node$i: $(tail -n 1 "$work/load$i.err")"
    elif d=$(diff_logits "$work/load$i" "$work/ref") && ! within "$d"; then
      echo "$EPOCHREALTIME FAIL via node$i: differs from the whole model by $d"
    else
      echo "$EPOCHREALTIME ok $ms"
    fi
  done >"$work/load$i.txt"
}
for i in "${survivors[@]}"; do
  load "$i" &
  load_pids+=($!)
done
sleep 1
# The generation streams through node${survivors[0]} meanwhile. The kill waits until
# it is 30 tokens in and, when it can, until node$victim holds part of the session's
# state: a stream pinned to other replicas is dropped and started again (5 tries).
gen_entry=${survivors[0]}
gen_hit=0
for try in 1 2 3 4 5; do
  wait_no_sessions 0 1 2
  rm -f "$work/gen_run.jsonl"
  # meshctl itself in the background (not a function's subshell), so that dropping
  # the stream ends the client and with it the session.
  bin/meshctl generate "$gen_name" "$gen_prompt" "${gen_args[@]}" --json --timeout 2m --addr "$(addr "$gen_entry")" \
    --token-file "$work/node0/admin.token" >"$work/gen_run.jsonl" 2>"$work/gen_run.err" &
  gen_pid=$!
  while (($(lines "$work/gen_run.jsonl") < 30)) && kill -0 "$gen_pid" 2>/dev/null; do sleep 0.02; done
  held_state=$(metric_sum layermesh_sessions_active "$victim")
  if [[ -z $held_state || $held_state != 0 ]]; then
    gen_hit=1
    break
  fi
  ((try == 5)) && break
  echo "stream try $try: pinned to replicas other than node$victim's; dropping it and starting again"
  kill "$gen_pid" 2>/dev/null
  wait "$gen_pid" 2>/dev/null || true
done
gen_at=$(lines "$work/gen_run.jsonl")
kill -KILL "${pids[victim]}"
t_kill=$(now)
wait "${pids[victim]}" 2>/dev/null || true
pids[victim]=""
echo "killed node$victim (SIGKILL) at +0.0 s, $gen_at events into the generation streaming through node$gen_entry"
((gen_hit)) && echo "node$victim held part of that generation's session state"
((gen_hit)) || echo "node$victim held none of that generation's state after 5 tries: the kill misses the session this time"
new_leader="" healed=""
while [[ -z $healed ]]; do
  (($(awk -v a="$t_kill" -v b="$EPOCHREALTIME" 'BEGIN { print (b - a > 60) }'))) &&
    fail "placement not healed 60 s after the kill: ready replicas per stage $(ready_replicas "${survivors[0]}" "node$victim")"
  if [[ -z $new_leader ]]; then
    l=$(leader_of "${survivors[0]}")
    if [[ -n $l && $l != "node$victim" ]]; then
      new_leader=$l
      echo "new Raft leader: $new_leader at +$(since "$t_kill") s"
    fi
  fi
  counts=$(ready_replicas "${survivors[0]}" "node$victim")
  if [[ -n $new_leader && $counts == "$full" ]]; then
    healed=$(since "$t_kill")
    echo "placement healed at +$healed s: ready replicas per stage $counts on node${survivors[0]} and node${survivors[1]}"
  fi
  sleep 0.25
done
sleep 2
touch "$work/stop"
wait "${load_pids[@]}"
load_pids=()
wait "$gen_pid" || fail "the generation streaming through node$gen_entry across the kill failed: $(cat "$work/gen_run.err")"
gen_pid=""
cmp -s "$work/gen_run.jsonl" "$work/gen_ref.jsonl" ||
  fail "the generation across the kill differs from the undisturbed run:
$(diff "$work/gen_run.jsonl" "$work/gen_ref.jsonl" | head -n 6)"
echo "generation across the kill: $(gen_tokens "$work/gen_run.jsonl") tokens, equal to the undisturbed run event for event"
replays=$(metric_sum layermesh_session_replays_total "$gen_entry")
[[ -n $replays ]] && echo "sessions replayed on other replicas by node$gen_entry: $replays"
ctl events --recent 1000 --addr "$(addr "$gen_entry")" | grep session_replay || true
# Latencies sorted, so that awk (mawk: no asort) reads the median off by line number.
sort -k3,3n "$work"/load*.txt | awk -v k="$t_kill" -v h="$healed" '
  { n++; if ($2 != "ok") { bad++; next } ok++; ms[ok] = $3
    if ($1 >= k && $1 <= k + h) { during++; if ($3 > dmax) dmax = $3 } }
  END {
    printf "queries: %d sent, %d answered equal to the whole model, %d failed; p50 %d ms, max %d ms\n", n, ok, bad, ms[int((ok + 1) / 2)], ms[ok]
    printf "between the kill and the heal: %d answered, slowest %d ms\n", during, dmax
    exit (bad > 0) }' || fail "queries failed around the kill:
$(grep -h FAIL "$work"/load*.txt | head -n 5)"
retried=$(metric_sum layermesh_stage_failovers_total "${survivors[@]}")
case $retried in
"") ;;
0) echo "no stage call was in flight on node$victim at the kill: nothing to retry this time" ;;
*) echo "stage calls in flight on node$victim at the kill, answered by the other replica: $retried" ;;
esac
echo
ctl plan "$model_name" --addr "$(addr "${survivors[0]}")"
echo
ctl status --addr "$(addr "${survivors[0]}")"

section "8. stop the survivors cleanly (SIGTERM) and remove the work folder"
t=$(now)
for i in "${survivors[@]}"; do kill -TERM "${pids[i]}"; done
for i in "${survivors[@]}"; do
  rc=0
  wait "${pids[i]}" || rc=$?
  pids[i]=""
  echo "node$i exited with status $rc: $(grep -o 'msg="node stopped"' "$work/node$i.log" | head -n 1 || echo "no stop line in its log")"
  ((rc == 0)) || fail "node$i exited with status $rc"
done
echo "stopped in $(since "$t") s"
echo
echo "demo: ok in $(since "$t0") s (after the build)"
