"""`emovlm-kd data check` and `emovlm-kd data sample`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emovlm_kd.config import DataConfig
from emovlm_kd.data.datasets import DATASET_PRESETS, SPLITS
from emovlm_kd.errors import UserError
from emovlm_kd.labels import TAXONOMIES


def register(subparsers: argparse._SubParsersAction, help_text: str) -> None:
    data = subparsers.add_parser("data", help=help_text, description=help_text)
    data.set_defaults(func=lambda args: _print_help(data))
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    check_help = "count images per split and class, decode every image, and report problems (exit 1 if unusable)"
    check = commands.add_parser("check", help=check_help, description=check_help)
    check.add_argument("root", metavar="ROOT", help="dataset folder, .jsonl/.csv manifest, `datasets` save_to_disk folder or .parquet file(s)")
    check.add_argument("--taxonomy", choices=sorted(TAXONOMIES), help="label set (default: the preset's, else guessed from the class names)")
    check.add_argument("--preset", choices=sorted(DATASET_PRESETS), help="a published dataset, which fixes the taxonomy")
    check.add_argument("--strict", action="store_true", help="treat any unreadable image as making the dataset unusable")
    check.add_argument("--image-column", default=DataConfig.image_column, help="image column of a save_to_disk folder or Parquet file (default: %(default)s)")
    check.add_argument("--label-column", default=DataConfig.label_column, help="label column (class names or ClassLabel ids) of such a table (default: %(default)s)")
    check.set_defaults(func=_check)

    sample_help = "build the small offline sample dataset (train/val/test folders and a manifest) in OUT"
    sample = commands.add_parser("sample", help=sample_help, description=sample_help)
    sample.add_argument("out", metavar="OUT", type=Path, help="folder to write the dataset into")
    sample.add_argument("--seed", type=int, default=0, help="seed for the image augmentations (default: 0)")
    sample.set_defaults(func=_sample)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _check(args: argparse.Namespace) -> int:
    from emovlm_kd.apps.report.summaries import format_dataset_check
    from emovlm_kd.data.check import check_dataset

    try:
        check = check_dataset(
            args.root, taxonomy=args.taxonomy, preset=args.preset, strict=args.strict,
            image_column=args.image_column, label_column=args.label_column,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_dataset_check(check))
    return 0 if check.usable else 1


def _sample(args: argparse.Namespace) -> int:
    # Lazy: building the sample needs the offline extras, which `data check` does not.
    from emovlm_kd.data.sample import build_sample_dataset
    from emovlm_kd.io import check_writable

    check_writable(args.out, folder=True, flag="OUT")
    summary = build_sample_dataset(args.out, seed=args.seed)
    # Counts per split may be totals or {label: count}.
    totals = {
        split: count if isinstance(count, int) else sum(count.values())
        for split, count in summary.get("per_split", {}).items()
    }
    splits = ", ".join(f"{split} {totals[split]}" for split in SPLITS if split in totals)
    verb = "reused" if summary.get("reused") else "wrote"
    print(f"{verb} {summary['images']} images ({splits}) in {args.out} in {summary['seconds']:.1f} s")
    print(f"check it with: emovlm-kd data check {args.out}")
    return 0
