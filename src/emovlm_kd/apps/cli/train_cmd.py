"""`emovlm-kd train`: run all stages of a config, or one, resuming finished ones."""

from __future__ import annotations

import argparse

from emovlm_kd.stages.registry import STAGE_NAMES


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("train", help=help_text, description=help_text)
    parser.add_argument("--config", help="YAML config (see configs/); default: the paper's settings")
    parser.add_argument("--out", required=True, help="run folder to write (resumed if it exists)")
    parser.add_argument("--stage", action="append", choices=STAGE_NAMES, help="run only this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo the chosen stages even if finished")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. distill.depth=2")
    parser.set_defaults(func=execute)


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.analysis.evaluation import evaluate_finished_run
    from emovlm_kd.apps.report.tables import format_table
    from emovlm_kd.config import load_config
    from emovlm_kd.io import check_writable
    from emovlm_kd.stages.runner import train

    config = load_config(args.config, args.overrides)
    check_writable(args.out, folder=True)
    metrics = evaluate_finished_run(train(config, args.out, tuple(args.stage or STAGE_NAMES), force=args.force))
    if metrics:
        print(format_table(metrics))
        print(f"run folder: {args.out}")
    return 0
