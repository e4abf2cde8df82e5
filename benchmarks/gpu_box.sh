#!/usr/bin/env bash
# Every GPU-path check and figure, in one go, on a machine with an NVIDIA GPU (one box: the
# regressor's replica and the training folds share its GPU). Each step has a time limit, logs to
# OUT/STEP.log and prints its tail; a failed step does not stop the next.
#
#   bash benchmarks/gpu_box.sh OUT [SECONDS_PER_LEVEL]
#
# 1. gpu_probe: which device training, the regressor and the case index use here.
# 2. bench_serve, topology ingress (the regressor a deployment of its own: what `auto` picks with a
#    GPU), then single (every stage in the ingress replicas; C = 1, 8, 32 each): overhead and
#    saturation when cores are not the limit (a 2-core laptop cannot show that).
# 3. the demo (the README's first command; DEMO_OUT of an interrupted run resumes it): synthetic archive, 5-fold CV on Ray Train with one GPU
#    per fold, bundle, index, backlog screened by the Ray Data job, report.
set -u
OUT=${1:?usage: bash benchmarks/gpu_box.sh OUT [SECONDS_PER_LEVEL]}
LEVEL_S=${2:-10}
PY=${PYTHON:-python3}
DECODE_THREADS=${DECODE_THREADS:-$(( $(nproc) / 4 > 1 ? $(nproc) / 4 : 1 ))}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s): $*"
    timeout --signal=INT --kill-after=30 "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    grep -v -e "^\[36m" -e "PydanticDeprecated" -e "^ *[a-z_]*: .* = Field(" "$OUT/$name.log" | tail -n 30
    "$PY" -m ray.scripts.scripts stop --force >/dev/null 2>&1  # whatever a step killed at its limit left behind
}

step gpu_probe 60 "$PY" benchmarks/gpu_probe.py --out "$OUT/gpu_probe.json"
step serve_ingress 200 "$PY" benchmarks/bench_serve.py --topology ingress --decode-threads "$DECODE_THREADS" \
    --duration "$LEVEL_S" --warmup 3 --out "$OUT/serve_ingress.json"
step serve_single 200 "$PY" benchmarks/bench_serve.py --topology single --decode-threads "$DECODE_THREADS" \
    --duration "$LEVEL_S" --warmup 3 --out "$OUT/serve_single.json"
step demo 200 "$PY" -m clare_dist demo --out "${DEMO_OUT:-$OUT/demo}"
