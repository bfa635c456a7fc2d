"""The Qwen vision towers' attention with one call per run of images of one length (ours)
against transformers' one call per image, on PRESET's bench images (all of one size, so one
call per block against one per image): the vision tower alone
and the whole prediction, timed in alternating pairs (`paired_ratio`), REPEATS times per
batch size. Above 1: transformers' way is slower.

    python scripts/time_vision_attention.py bench 1,4,16 7              (CPU)
    python scripts/time_vision_attention.py bench-7b 8,32,64 5 cuda     (a GPU machine)"""
import functools
import sys

import torch

from emovlm_kd.analysis.measure import paired_ratio
from emovlm_kd.apps.bench.figures import Models, bench_images

preset, sizes, repeats = sys.argv[1], [int(size) for size in sys.argv[2].split(",")], int(sys.argv[3])
models = Models(preset, seed=0, device=sys.argv[4] if len(sys.argv) > 4 else "cpu")
adapter, blocks = models.adapter, models.adapter.model.model.visual.blocks
ours = [block.attn.forward for block in blocks]
theirs = [functools.partial(type(block.attn).forward, block.attn) for block in blocks]


def way(forwards, part):
    """One batch through `part` with `forwards` as the blocks' attention (`paired_ratio`
    times it with the GPU's queued work included)."""
    def run(batch):
        for block, forward in zip(blocks, forwards):
            block.attn.forward = forward
        if part == "vision":
            with torch.no_grad():
                adapter.visual_tokens(adapter.to_device(adapter.encode_images(batch)))
        else:
            models.pipeline.predict_images(batch)
    return run


for size in sizes:
    batches = [bench_images(size, seed=0)]
    for part in ("vision", "predict"):
        ratio, slow, fast, every = paired_ratio(way(theirs, part), way(ours, part), batches, repeats, every_ratio=True)
        print(f"batch {size} {part}: per-image calls / one call {ratio:.3f} (repeats {min(every):.3f} to "
              f"{max(every):.3f}); {slow:.4f} against {fast:.4f} s per image", flush=True)
