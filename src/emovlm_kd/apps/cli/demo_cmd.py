"""`emovlm-kd demo`: the sample dataset, then every stage on the offline presets, then the table."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("demo", help=help_text, description=help_text)
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--data", help="where to build the sample dataset (default: beside --out, 'sample')")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. instruct.epochs=2")
    parser.set_defaults(func=execute)


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.analysis.evaluation import evaluate_finished_run
    from emovlm_kd.apps.report.tables import format_table
    from emovlm_kd.config import load_config
    from emovlm_kd.data.sample import build_sample_dataset
    from emovlm_kd.io import check_writable
    from emovlm_kd.stages.runner import train

    started = time.perf_counter()
    out = Path(args.out)
    data = Path(args.data) if args.data else out.parent / "sample"
    check_writable(out, folder=True)
    check_writable(data, folder=True, flag="--data")
    summary = build_sample_dataset(data)
    print(f"sample dataset: {summary['images']} images in {data}")
    config_file = resources.files("emovlm_kd") / "configs" / "demo.yaml"
    with resources.as_file(config_file) as path:
        config = load_config(path, [f"data.root={data}", f"instruct.annotations={data / 'annotations.jsonl'}",
                                    f"cache_dir={out.parent / 'cache'}", *args.overrides])
    metrics = evaluate_finished_run(train(config, out))
    print(format_table(metrics))
    print(f"run folder: {out}  (try: emovlm-kd predict --run {out} {data}/test)")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
