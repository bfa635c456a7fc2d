"""`emovlm-kd bench`: our pipeline against the reference pipeline; prints and saves the figures."""

from __future__ import annotations

import argparse
import json


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("bench", help=help_text, description=help_text)
    parser.add_argument("--preset", default="bench", help="model preset (default: bench, ~100M random Qwen2-VL)")
    parser.add_argument("--out", default="bench.json", help="where to write the figures (default: bench.json)")
    parser.add_argument("--images", type=int, default=16, help="images per timing (default: 16)")
    parser.add_argument("--train-images", type=int, default=8, help="images for the stage 2+3 comparison (default: 8)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing; the median is kept (default: 5)")
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="batch sizes to try (default: 1,4,8,16)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or cuda:N (default: auto, the GPU in bf16 where there is one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emovlm_kd.apps.bench import BenchConfig, run_bench
    from emovlm_kd.apps.report.tables import format_bench
    from emovlm_kd.errors import UserError
    from emovlm_kd.io import atomic_write_text
    from emovlm_kd.models.registry import get_preset

    get_preset(args.preset)  # an unknown name fails here, in one sentence
    try:
        batch_sizes = tuple(sorted({int(b) for b in args.batch_sizes.split(",")}))
    except ValueError:
        raise UserError("--batch-sizes must be whole numbers separated by commas, e.g. 1,4,8.", exit_code=2) from None
    if min(batch_sizes) < 1 or 1 not in batch_sizes or args.images < 1 or args.repeats < 1 or args.train_images < 1:
        raise UserError("--images, --repeats and --train-images must be at least 1, and --batch-sizes must include 1.",
                        exit_code=2)
    if args.device != "auto":
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UserError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N.", exit_code=2) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but PyTorch sees no GPU here; use --device cpu.", exit_code=2)
    config = BenchConfig(preset=args.preset, images=args.images, repeats=args.repeats, batch_sizes=batch_sizes,
                         train_images=min(args.train_images, args.images), device=args.device)

    def checkpoint(result):  # the figures so far, so that a run cut short leaves them
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")

    result = run_bench(config, checkpoint=checkpoint)
    print(format_bench(result))
    print(f"figures written to {args.out}")
    return 0
