"""Does cuDNN attention cost a graph build per new shape? `bench`'s instruct figure and
predict on batches of new image sizes, with torch's cuDNN attention on, off, and on again.

    python scripts/gpu_attention_check.py bench-7b cuda     (tiny cpu: to try it)

Run on an H200 before cuDNN attention was turned off (benchmarks/h200-2026-12-04/)."""
import sys
import time

import torch

from emovlm_kd.analysis.measure import synchronize
from emovlm_kd.apps.bench.figures import Models, bench_images
from emovlm_kd.apps.bench.instruct import instruct_figures

preset, device = sys.argv[1], sys.argv[2]
models = Models(preset, 0, device)
images = bench_images(12, 0)

def mixed(seed, count, sizes):
    return [img.resize((w, h)) for img, (w, h) in zip(bench_images(count, seed), sizes)]

def predict_times(seed):
    out = []
    for k in range(3):  # three batches, each of new sizes: new sequence lengths
        sizes = [(448 - 28 * ((seed * 7 + k * 3 + i) % 6), 448 - 28 * ((seed + k + i) % 5)) for i in range(8)]
        batch = mixed(seed + k, 8, sizes)
        synchronize(); t = time.perf_counter()
        models.pipeline.predict_images(batch)
        synchronize(); out.append(round(time.perf_counter() - t, 3))
    return out

for label, cudnn, imgs in (("cudnn on", True, images[:6]), ("cudnn off", False, images[6:12]), ("cudnn on again", True, images[6:12])):
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    t = time.perf_counter()
    fig = instruct_figures(models, imgs)
    print(f"{label}: instruct_speedup {fig['instruct_speedup']:.2f}, per image reference {fig['instruct']['reference_seconds_per_image']:.3f} s, "
          f"ours {fig['instruct']['ours_seconds_per_image']:.3f} s ({time.perf_counter() - t:.1f} s)", flush=True)
    print(f"{label}: predict, 3 batches of 8 of new sizes each, seconds: {predict_times(len(label))}", flush=True)
    print(f"{label}: predict, same sizes again: {predict_times(len(label))}", flush=True)
