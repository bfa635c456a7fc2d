"""`emovlm-kd compare`: a metrics file's accuracies beside the paper's for the same dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("compare", help=help_text, description=help_text)
    parser.add_argument(
        "metrics", metavar="METRICS", help="a metrics.json (from train or evaluate), or the folder holding it"
    )
    parser.add_argument(
        "--dataset", metavar="NAME", help="the dataset it is on, when the file does not say (fi, emotion6, ...)"
    )
    parser.set_defaults(func=execute)


def read_metrics(path: Path) -> dict:
    from emovlm_kd.errors import UserError

    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass RUN/metrics.json or the metrics.json that evaluate wrote.")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a JSON file; pass the metrics.json that train or evaluate wrote.") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{path} does not hold a metrics object; pass the metrics.json that train or evaluate wrote.")
    return metrics


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.analysis.paper_results import PAPER_PRESET, comparison, metrics_dataset
    from emovlm_kd.apps.report.document import to_text
    from emovlm_kd.apps.report.tables import comparison_table

    metrics = read_metrics(Path(args.metrics))
    dataset = metrics_dataset(metrics, args.dataset)
    rows = comparison(metrics, dataset)
    print(f"dataset {dataset}, {metrics.get('split', '?')} split, {metrics.get('images', '?')} images")
    print(to_text(comparison_table(rows)))
    if all(row["paper"] is None for row in rows):
        print(f"The paper reports no accuracy on {dataset}; only ours is shown.")
    if metrics.get("split", "test") != "test":
        print(f"Note: these are {metrics['split']}-split numbers; the paper's are on test.")
    if metrics.get("dataset") and args.dataset and metrics["dataset"] != dataset:
        print(f"Note: the file says it is on {metrics['dataset']}, compared as {dataset} as asked.")
    preset = metrics.get("preset")
    if preset and preset != PAPER_PRESET:
        print(f"Note: this run used the {preset!r} models, not the paper's; the gap says nothing about reproduction.")
    return 0
