"""The bench's settings; the `bench` command line is built from these fields and their help."""

from __future__ import annotations

from dataclasses import dataclass

from emovlm_kd.config import setting
from emovlm_kd.errors import UserError


@dataclass
class BenchConfig:
    preset: str = setting("bench", "model preset (bench: ~100M random Qwen2-VL; bench-7b: 7B shapes)", metavar="NAME")
    images: int = setting(16, "images per timing", metavar="N")
    repeats: int = setting(5, "runs per timing; the median is kept", metavar="N")
    batch_sizes: tuple[int, ...] = setting((1, 4, 8, 16), "batch sizes to try, comma-separated, 1 among them",
                                           metavar="SIZES")
    # The reference regenerates its inputs in every epoch: a few images show the gap.
    train_images: int = setting(8, "images for the stage 2+3 training comparison (at most --images)", metavar="N")
    # Every image costs a few seconds per task on a CPU; the ratio is much the same for each.
    instruct_images: int = setting(4, "images for the instruction-tuning comparison, one epoch each way (at most "
                                   "--images)", metavar="N")
    predict_images: int = setting(64, "JPEGs of mixed sizes that `predict` reads from disk for predict_end_to_end_ratio",
                                  metavar="N")
    device: str = setting("auto", "cpu, cuda or cuda:N; auto: the GPU in bf16 where there is one, else the CPU "
                          "in fp32", metavar="DEVICE")
    dtype: str = setting("auto", "precision of both ways: auto (bf16 on a GPU, float32 on a CPU), float32 or bfloat16",
                         choices=("auto", "float32", "bfloat16"), metavar="DTYPE")
    profile: bool = setting(False, "also profile one batch at the best batch size: where the time goes (operators, "
                            "attention kernels, vision tower / language model / scoring)")
    serve: bool = setting(False, "also time the HTTP server under 16 concurrent clients against predict (serve_ratio)")
    peak_tflops: float | None = setting(None, "the device's peak dense TFLOP/s in the bench's dtype, for the model "
                                        "FLOPs utilisation (default: known for H100, H200, A100, L40S and L4 in bf16; "
                                        "none for a CPU)", metavar="TFLOPS")
    seed: int = 0
    # CPU threads; None: torch's own count.
    threads: int | None = None

    def __post_init__(self):
        self.batch_sizes = tuple(sorted(set(self.batch_sizes)))
        counts = (self.images, self.repeats, self.train_images, self.instruct_images, self.predict_images)
        if min(self.batch_sizes) < 1 or 1 not in self.batch_sizes or min(counts) < 1:
            raise UserError("--images, --repeats, --train-images, --instruct-images and --predict-images must be at "
                            "least 1, and --batch-sizes must include 1.", exit_code=2)
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise UserError("--peak-tflops must be above 0: the device's peak dense TFLOP/s.", exit_code=2)
        self.train_images = min(self.train_images, self.images)
        self.instruct_images = min(self.instruct_images, self.images)
