"""`emovlm-kd bench`: our pipeline against the reference pipeline; prints and saves the figures."""

from __future__ import annotations

import argparse
import json

from emovlm_kd.apps.bench.config import BenchConfig
from emovlm_kd.apps.cli.flags import add_config_flags, config_from_flags


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("bench", help=help_text, description=help_text)
    parser.add_argument("--out", default="bench.json", help="where to write the figures (default: bench.json)")
    add_config_flags(parser, BenchConfig)
    parser.set_defaults(func=execute)


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.apps.bench.figures import run_bench
    from emovlm_kd.apps.cli.serve_cmd import require_serving_packages
    from emovlm_kd.apps.report.tables import format_bench, format_profile
    from emovlm_kd.errors import UserError
    from emovlm_kd.io import atomic_write_text, check_writable
    from emovlm_kd.models.registry import get_preset

    get_preset(args.preset)  # an unknown name fails here, in one sentence
    check_writable(args.out, folder=False)  # before minutes of timing, not after
    if args.device != "auto":
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UserError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N.", exit_code=2) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but PyTorch sees no GPU here; use --device cpu.", exit_code=2)
    if args.serve:
        require_serving_packages()
    config = config_from_flags(BenchConfig, args)

    def checkpoint(result):  # the figures so far, so that a run cut short leaves them
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")

    result = run_bench(config, checkpoint=checkpoint)
    print(format_bench(result))
    if "profile" in result:
        print(format_profile(result["profile"]))
    print(f"figures written to {args.out}")
    return 0
