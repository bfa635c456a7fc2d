"""`bench`'s inference figures alone (speed-ups, floor ratio, batch scaling, defaults as in
`emovlm-kd bench`), with torch on THREADS threads, both ways in DTYPE (float32 unless
given). With fewer threads than cores, a machine with less arithmetic to offer is
imitated: on 2 cores, 1 thread halves ours.

    taskset -c 0 python scripts/bench_inference.py 1 [bfloat16]"""
import json
import sys

import torch

from emovlm_kd.apps.bench.config import BenchConfig
from emovlm_kd.apps.bench.figures import Models, bench_images, inference_figures

torch.set_num_threads(int(sys.argv[1]))
config = BenchConfig()
dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32
models = Models(config.preset, seed=config.seed, dtype=dtype)
figures = inference_figures(models, bench_images(config.images, config.seed), config)
print(f"{torch.get_num_threads()} threads, {dtype}:", json.dumps(figures, indent=1))
