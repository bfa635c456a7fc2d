"""`emovlm-kd evaluate`: score teacher, VLM, head and EmoVLM-KD on a split; write the metrics,
one prediction per image, and a report with plots (and, with --efficiency, the cost table).

Writes to --out (default RUN/evaluation/<split>, or RUN/evaluation/<data folder>-<split>):
  metrics.json       per model: accuracy, macro-F1, per-class precision/recall/F1, confusion
                     matrix, ECE and reliability bins; the complementarity tables
  predictions.jsonl  per image: true label, and each model's label and probabilities
  report.html        self-contained (figures inlined); report.md beside plots/*.png
  efficiency.json    with --efficiency: parameters and FLOPs at paper scale, measured latency
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("evaluate", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    parser.add_argument(
        "--data", metavar="ROOT", help="evaluate on another dataset folder or manifest of the same classes"
    )
    parser.add_argument(
        "--dataset", metavar="NAME", help="the dataset preset of --data (fi, emotion6, ...), recorded for `compare`"
    )
    parser.add_argument("--out", help="folder for the outputs (default: RUN/evaluation/<split>)")
    parser.add_argument(
        "--efficiency",
        action="store_true",
        help="add parameters and FLOPs at the paper's scale and the measured latency and memory of the run's models",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="write metrics and predictions only (no matplotlib needed)"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=execute)


def output_folder(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    name = f"{Path(args.data).name}-{args.split}" if args.data else args.split
    return Path(args.run) / "evaluation" / name


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.analysis.evaluation import prediction_records, score_run, summarize, with_data
    from emovlm_kd.apps.report.plots import require_matplotlib
    from emovlm_kd.apps.report.tables import format_complementarity, format_efficiency, format_table
    from emovlm_kd.errors import UserError
    from emovlm_kd.io import atomic_write_text, check_writable, write_json
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.registry import STAGE_NAMES

    if args.dataset and not args.data:
        raise UserError(
            "--dataset names the folder given with --data; the run's own dataset is in its config.", exit_code=2
        )
    if not args.no_report:
        require_matplotlib()
    trained = RunFolder.open(args.run)
    trained.require(*STAGE_NAMES)
    evaluated = with_data(trained, args.data, args.dataset) if args.data else trained
    out = output_folder(args)
    check_writable(out, folder=True)

    scores = score_run(evaluated, args.split)
    metrics = summarize(scores, evaluated, own_data=not args.data)
    write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in prediction_records(scores)))
    written = [out / "metrics.json", out / "predictions.jsonl"]

    efficiency = None
    if args.efficiency:
        from emovlm_kd.analysis.measure import run_efficiency

        efficiency = run_efficiency(trained, scores.samples)
        write_json(out / "efficiency.json", efficiency)
        written.append(out / "efficiency.json")

    if not args.no_report:
        from emovlm_kd.apps.report.document import write_report
        from emovlm_kd.apps.report.evaluation import evaluation_blocks

        stages = {stage: trained.stage_metrics(stage) for stage in STAGE_NAMES}
        blocks = evaluation_blocks(metrics, stages, efficiency)
        title = f"EmoVLM-KD evaluation: {trained.directory.name}, {metrics['split']} split"
        written += [path for path in write_report(out, "report", title, blocks) if path.suffix != ".png"]

    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(format_table(metrics))
    print(format_complementarity(metrics))
    if efficiency:
        print(format_efficiency(efficiency))
    for path in written:
        print(f"wrote {path}")
    return 0
