"""`predict` over JPEGs of mixed sizes with each batch preprocessed one batch ahead, on a
thread of its own, against preprocessed when the model asks for it (what a CPU does by
default); the two ways alternate run by run, and the predictions are compared first.

    python scripts/time_predict_ahead.py bench 4 64           (bench-7b 32 128 cuda on a GPU machine)"""
import sys
import tempfile

import torch

from emovlm_kd.analysis.measure import paired_ratio
from emovlm_kd.apps.bench.figures import Models, bench_jpegs

preset, batch_size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
models = Models(preset, seed=0, device=device)
pipeline, workers = models.pipeline, 2
with tempfile.TemporaryDirectory() as folder:
    paths = bench_jpegs(folder, count, seed=0)

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
