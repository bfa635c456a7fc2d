"""`emovlm-kd presets`: the model presets (family, VLM size, network or not) and the dataset presets."""

from __future__ import annotations

import argparse


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("presets", help=help_text, description=help_text)
    parser.add_argument("pattern", nargs="?", default="*", help="wildcard on preset names (model and dataset), e.g. 'qwen*' or 'fi'")
    parser.set_defaults(func=execute)


def execute(args: argparse.Namespace) -> int:
    import fnmatch

    from emovlm_kd.apps.report.tables import format_count
    from emovlm_kd.data.datasets import DATASET_PRESETS
    from emovlm_kd.errors import UserError
    from emovlm_kd.models.registry import list_presets, vlm_parameters

    models = list_presets(args.pattern)
    datasets = {name: dataset for name, dataset in DATASET_PRESETS.items() if fnmatch.fnmatch(name, args.pattern)}
    if not models and not datasets:
        raise UserError(f"no model or dataset preset matches {args.pattern!r}; run `emovlm-kd presets` for them all.")
    if models:
        # VLM sizes are counted on the meta device from a config: the tiny builder's, one on
        # this machine, or the published values kept with the preset; nothing is downloaded.
        print("model presets:")
        print(f"  {'name':<22} {'family':<16} {'VLM params':>10}  {'network':<8} description")
        for preset in models:
            network = "no" if preset.offline else "yes"
            print(f"  {preset.name:<22} {preset.family:<16} {format_count(vlm_parameters(preset)):>10}  "
                  f"{network:<8} {preset.description}")
        print("  (network 'yes': the weights download once, or load from a local copy given as a folder)")
    if datasets:
        print("dataset presets:")
        for name, dataset in datasets.items():
            print(f"  {name:<12} {dataset.taxonomy:<11} {dataset.description}")
    return 0
