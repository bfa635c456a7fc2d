"""`emovlm-kd predict`: the emotion of image files or folders, with a trained run.

Under `accelerate launch` / `torchrun` each process predicts every world_size-th image and
writes a part file; rank 0 merges them into one output in the input order (--out needed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("predict", help=help_text, description=help_text)
    # --run-dir is the same option for torchrun, whose own --run-path swallows "--run".
    parser.add_argument("--run", "--run-dir", dest="run", required=True, help="a trained run folder")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--explain", action="store_true", help="add a one-sentence explanation by the VLM")
    parser.add_argument("--out", help="write to this file instead of standard output (needed under a launcher)")
    parser.set_defaults(func=run)


class RowWriter:
    """Prints prediction rows as table lines, JSON lines or CSV."""

    def __init__(self, stream, fmt: str, labels: tuple[str, ...]):
        self.stream, self.format, self.labels = stream, fmt, labels
        self.csv = None

    def write(self, row: dict) -> None:
        if self.format == "json":
            self.stream.write(json.dumps(row) + "\n")
        elif self.format == "csv":
            if self.csv is None:
                fields = ["image", "label", "error", "explanation"] + [
                    f"{part}_{label}" for part in ("probs", "vlm", "head") for label in self.labels
                ]
                self.csv = csv.DictWriter(self.stream, fieldnames=fields)
                self.csv.writeheader()
            flat = {key: row[key] for key in ("image", "label", "error", "explanation")}
            for part in ("probs", "vlm", "head"):
                flat.update({f"{part}_{label}": p for label, p in row[part].items()})
            self.csv.writerow(flat)
        elif row["error"]:
            self.stream.write(f"{row['image']}\tERROR: {row['error']}\n")
        else:
            line = f"{row['image']}\t{row['label']}\t{row['probs'][row['label']]:.3f}"
            if row["explanation"] is not None:
                line += f"\t{row['explanation']}"
            self.stream.write(line + "\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from emovlm_kd import distributed
    from emovlm_kd.errors import UserError
    from emovlm_kd.io import atomic_write_text
    from emovlm_kd.pipeline import EmoVLMKD, expand_paths

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1.", exit_code=2)
    if distributed.launched() and not args.out:
        raise UserError("under a launcher, give --out FILE: the processes' results are merged into it.", exit_code=2)
    paths = expand_paths(args.paths)
    if not paths:
        raise UserError("no image files found in the given paths; give .jpg/.png/... files or folders holding them.")
    model = EmoVLMKD.from_pretrained(args.run)
    mine = list(range(len(paths)))[distributed.rank() :: distributed.world_size()]
    predictions = model.predict_paths([paths[i] for i in mine], batch_size=args.batch_size, explain=args.explain)

    if distributed.launched():
        out = Path(args.out)
        part = out.with_name(f".{out.name}.part{distributed.rank()}")
        lines = [json.dumps({"index": i, "row": p.to_dict()}) for i, p in zip(mine, predictions)]
        atomic_write_text(part, "".join(line + "\n" for line in lines))
        distributed.barrier()
        if not distributed.is_main():
            return 0
        rows: dict[int, dict] = {}
        for rank in range(distributed.world_size()):
            shard = out.with_name(f".{out.name}.part{rank}")
            for line in shard.read_text().splitlines():
                record = json.loads(line)
                rows[record["index"]] = record["row"]
            shard.unlink()
        ordered = [rows[i] for i in range(len(paths))]
    else:
        ordered = None

    buffer = io.StringIO() if args.out else sys.stdout
    writer = RowWriter(buffer, args.format, model.taxonomy.labels)
    failed = 0
    for prediction in ordered if ordered is not None else (p.to_dict() for p in predictions):
        failed += prediction["error"] is not None
        writer.write(prediction)
    if args.out:
        atomic_write_text(args.out, buffer.getvalue())
        print(f"{len(paths)} predictions written to {args.out}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(paths)} images could not be read.", file=sys.stderr)
    return 1 if failed else 0
