"""`emovlm-kd evaluate`: accuracy and macro-F1 of teacher, VLM, head and EmoVLM-KD on a split."""

from __future__ import annotations

import argparse
import json


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("evaluate", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emovlm_kd.evaluation import evaluate_run, format_table
    from emovlm_kd.run import Run

    metrics = evaluate_run(Run.open(args.run), args.split)
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics))
    return 0
