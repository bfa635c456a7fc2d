"""`predict` over JPEGs of mixed sizes with each batch preprocessed one batch ahead, on a
thread of its own, against preprocessed when the model asks for it (what a CPU does by
default); the two ways alternate run by run, and the predictions are compared first.

    python scripts/time_predict_ahead.py bench 4 64           (bench-7b 32 128 cuda on a GPU machine)"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from emovlm_kd.analysis.measure import paired_ratio
from emovlm_kd.apps.bench.figures import Models, bench_images

preset, batch_size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
models = Models(preset, seed=0, device=device)
pipeline, workers = models.pipeline, 2
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as folder:
    paths = []
    for index in range(count):
        width, height = (int(side) for side in rng.integers(200, 1200, size=2))
        path = Path(folder) / f"{index:03d}.jpg"
        bench_images(1, index, size=max(width, height))[0].resize((width, height)).save(path, quality=90)
        paths.append(path)

    def predicting(ahead: bool):
        def run(files):
            pipeline.prepare_ahead = ahead
            return [prediction.to_dict() for prediction in pipeline.predict_paths(files, batch_size, workers=workers)]
        return run

    first = paths[: 2 * batch_size]
    print("same predictions:", predicting(True)(first) == predicting(False)(first))
    ratio, ahead, inline, ratios = paired_ratio(predicting(True), predicting(False), [paths], 5, every_ratio=True)
    print(f"{torch.get_num_threads()} threads, batch {batch_size}, {count} JPEGs, {workers} decoding threads: "
          f"ahead {1 / ahead:.2f} images/s, inline {1 / inline:.2f}; time ahead / inline {ratio:.3f} "
          f"(per repeat {', '.join(f'{r:.3f}' for r in ratios)})")
