#!/usr/bin/env bash
# Every GPU check of the throughput issue in one run: the four stages on the sample dataset
# (configs/checks/gpu.yaml), predict over its test images, then `bench` with the model FLOPs
# utilisation at batch 1, 8, 32 and 64. Each step's wall time goes to OUT/times.txt.
#
#   scripts/gpu_checks.sh OUT [PRESET] [SAMPLE]
#
# PRESET: bench-7b (default; Qwen2-VL-7B's shapes, random weights, built on the GPU), or tiny
# to try the script on a CPU first. SAMPLE: the sample dataset (default runs/sample, built
# here by `emovlm-kd data sample` when missing; it needs the Noto emoji font, so on a machine
# without network build it beforehand and bring it along). BENCH_ARGS replaces the bench's
# sizes, e.g. BENCH_ARGS="--images 4 --batch-sizes 1,2 --repeats 1" on a CPU.
set -euo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT [PRESET] [SAMPLE]}
preset=${2:-bench-7b}
sample=${3:-runs/sample}
emovlm=${EMOVLM:-emovlm-kd}
bench_args=${BENCH_ARGS:---images 64 --batch-sizes 1,8,32,64 --repeats 3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
: > "$out/times.txt"

step() {  # step NAME COMMAND...: runs it, logs to OUT/NAME.log, records its wall time
    local name=$1 start=$SECONDS
    shift
    if ! "$@" > "$out/$name.log" 2>&1; then
        echo "$name failed after $((SECONDS - start)) s; see $out/$name.log" | tee -a "$out/times.txt"
        tail -n 20 "$out/$name.log"
        exit 1
    fi
    echo "$name $((SECONDS - start)) s" | tee -a "$out/times.txt"
}

[ -f "$sample/dataset.json" ] || step sample $emovlm data sample "$sample"
step train $emovlm train --config configs/checks/gpu.yaml --out "$out/run" "preset=$preset" "data.root=$sample" \
    "instruct.annotations=$sample/annotations.jsonl" "cache_dir=$out/cache"
step predict $emovlm predict --run "$out/run" "$sample/test" --batch-size 32 --format csv --out "$out/predict.csv"
# shellcheck disable=SC2086 # bench_args is a list of flags
step bench $emovlm bench --preset "$preset" $bench_args --out "$out/bench.json"
tail -n 25 "$out/bench.log"
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv; fi
