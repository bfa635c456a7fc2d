"""Image preprocessing of a batch: the image processor against the adapter's own path
(`process_images`), and `encode` with the tokenizer; median seconds of 7 calls each.

    python scripts/time_preprocessing.py bench 8,32           (bench-7b 32,64 cuda on a GPU machine)"""
import statistics
import sys
import time

from emovlm_kd.apps.bench.figures import Models, bench_images
from emovlm_kd.models.vlm.base import VLMAdapter


def median_seconds(call, repeats: int = 7) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


preset, batch_sizes = sys.argv[1], [int(size) for size in sys.argv[2].split(",")]
models = Models(preset, seed=0, device=sys.argv[3] if len(sys.argv) > 3 else "cpu")
adapter = models.adapter
for size in batch_sizes:
    images, prompts = bench_images(size, seed=0), [models.prompt] * size
    processor = median_seconds(lambda images=images: VLMAdapter.process_images(adapter, images))
    ours = median_seconds(lambda images=images: adapter.process_images(images))
    encode = median_seconds(lambda images=images, prompts=prompts: adapter.encode(images, prompts))
    print(f"batch {size}: image processor {processor:.4f} s, ours {ours:.4f} s ({processor / ours:.1f}x), encode {encode:.4f} s")
