"""`emovlm-kd predict`: the emotion of image files or folders, with a trained run."""

from __future__ import annotations

import argparse
import csv
import json
import sys


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("predict", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--explain", action="store_true", help="add a one-sentence explanation by the VLM")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emovlm_kd.errors import UserError
    from emovlm_kd.pipeline import EmoVLMKD, expand_paths

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1.", exit_code=2)
    paths = expand_paths(args.paths)
    if not paths:
        raise UserError("no image files found in the given paths; give .jpg/.png/... files or folders holding them.")
    model = EmoVLMKD.from_pretrained(args.run)
    failed = 0
    writer = None
    for prediction in model.predict_paths(paths, batch_size=args.batch_size, explain=args.explain):
        failed += prediction.error is not None
        row = prediction.to_dict()
        if args.format == "json":
            print(json.dumps(row), flush=True)
        elif args.format == "csv":
            if writer is None:
                fields = ["image", "label", "error", "explanation"] + [
                    f"{part}_{label}" for part in ("probs", "vlm", "head") for label in model.taxonomy.labels
                ]
                writer = csv.DictWriter(sys.stdout, fieldnames=fields)
                writer.writeheader()
            flat = {key: row[key] for key in ("image", "label", "error", "explanation")}
            for part in ("probs", "vlm", "head"):
                flat.update({f"{part}_{label}": p for label, p in row[part].items()})
            writer.writerow(flat)
        else:
            if prediction.error:
                print(f"{prediction.image}\tERROR: {prediction.error}", flush=True)
            else:
                confidence = prediction.probs[prediction.label]
                line = f"{prediction.image}\t{prediction.label}\t{confidence:.3f}"
                if prediction.explanation is not None:
                    line += f"\t{prediction.explanation}"
                print(line, flush=True)
    if failed:
        print(f"{failed} of {len(paths)} images could not be read.", file=sys.stderr)
    return 1 if failed else 0
