"""`bench`'s inference figures alone (speed-ups, floor ratio, batch scaling, defaults as in
`emovlm-kd bench`), with torch on THREADS threads, both ways in DTYPE (`bench --dtype`'s
names; auto, float32 on a CPU, unless given). With fewer threads than cores, a machine
with less arithmetic to offer is imitated: on 2 cores, 1 thread halves ours.

    taskset -c 0 python scripts/bench_inference.py 1 [bfloat16]"""
import json
import sys

import torch

from emovlm_kd.apps.bench.config import BenchConfig
from emovlm_kd.apps.bench.figures import Models, bench_images, inference_figures
from emovlm_kd.models.registry import INFERENCE_DTYPES

arguments = sys.argv[1:]
if not (1 <= len(arguments) <= 2 and arguments[0].isdigit() and int(arguments[0]) > 0
        and all(name in INFERENCE_DTYPES for name in arguments[1:])):
    sys.exit(f"usage: python scripts/bench_inference.py THREADS [{'|'.join(INFERENCE_DTYPES)}], "
             "THREADS a whole number such as 1.")
torch.set_num_threads(int(arguments[0]))
config = BenchConfig(dtype=arguments[1] if len(arguments) > 1 else "auto")
models = Models(config.preset, seed=config.seed, dtype=INFERENCE_DTYPES[config.dtype])
figures = inference_figures(models, bench_images(config.images, config.seed), config)
print(f"{torch.get_num_threads()} threads, {models.dtype}:", json.dumps(figures, indent=1))
