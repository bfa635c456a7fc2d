"""Runs `emovlm-kd predict` and SIGKILLs itself right after writing its K-th batch of rows.

Started as a script by tests/test_predict_resume.py, alone or under torchrun:

    python tests/predict_crash.py K COUNTS ARGV...

K = 0 never kills. The kill is kill -9: no cleanup, no atexit, no flushing. Each time the
model runs, the process appends "RANK IMAGES" to the file COUNTS, so a test can tell how
many images a rerun predicted again.
"""

import os
import signal
import sys

from emovlm_kd.apps import cli
from emovlm_kd.apps.cli.predict_cmd import RowWriter
from emovlm_kd.pipeline import EmoVLMKD


def killable(kill_after: int, counts: str, argv: list[str]) -> int:
    written = 0
    real_write, real_predict = RowWriter.write, EmoVLMKD.predict_images

    def write(self, rows):
        nonlocal written
        real_write(self, rows)
        written += 1
        if written == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def predict_images(self, images, explain=False):
        with open(counts, "a") as handle:
            handle.write(f"{os.environ.get('RANK', '0')} {len(images)}\n")
        return real_predict(self, images, explain=explain)

    RowWriter.write, EmoVLMKD.predict_images = write, predict_images
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(killable(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))
