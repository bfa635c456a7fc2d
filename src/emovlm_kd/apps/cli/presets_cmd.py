"""`emovlm-kd presets`: the model presets and the dataset presets."""

from __future__ import annotations

import argparse


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("presets", help=help_text, description=help_text)
    parser.add_argument("pattern", nargs="?", default="*", help="wildcard on preset names, e.g. 'qwen*'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emovlm_kd.data.datasets import DATASET_PRESETS
    from emovlm_kd.models.registry import list_presets

    print("model presets:")
    for preset in list_presets(args.pattern):
        where = "offline" if preset.offline else "needs the network (or a local copy)"
        print(f"  {preset.name:<12} {where:<36} {preset.description}")
    print("dataset presets:")
    for name, dataset in DATASET_PRESETS.items():
        print(f"  {name:<12} {dataset.taxonomy:<11} {dataset.description}")
    return 0
