"""`bench`'s batch_scaling alone, with more repeats: ours on 16 bench images as one batch
against the same images as two batches of 8, timed in alternating pairs, with torch on
THREADS threads. It also prints the chunk size each batch is cut to on this CPU (both run
the same chunks when the last-level cache allows fewer than 8 images per call).

    taskset -c 0 python scripts/time_batch_scaling.py 1 10"""
import sys

import torch

from emovlm_kd.apps.bench.config import BenchConfig
from emovlm_kd.apps.bench.figures import Models, batch_scaling_pairs, bench_images

torch.set_num_threads(int(sys.argv[1]))
config = BenchConfig()
models = Models(config.preset, seed=config.seed)
images = bench_images(16, config.seed)
ours = models.pipeline.predict_images
print(f"last-level cache {models.pipeline.cpu_cache_bytes} bytes; chunk size at batch 16: "
      f"{models.pipeline.chunk_size(images)}, at batch 8: {models.pipeline.chunk_size(images[:8])}")
ratio, whole, halves, repeats = batch_scaling_pairs(ours, images, 16, 8, int(sys.argv[2]))
print(f"{torch.get_num_threads()} threads: batch 16 over 2 x 8 per image {ratio:.3f} (median of {len(repeats)}: "
      + ", ".join(f"{r:.3f}" for r in repeats) + f"); {whole:.4f} and {halves:.4f} s per image")
