"""`emovlm-kd predict`: the emotion of image files or folders, with a trained run.

Worker threads decode the next images while the model runs, and each finished batch is
written at once. With --out, a rerun of the same command after a crash continues the file:
`.FILE.state` beside it names the command while it is unfinished, the whole rows already
in FILE are kept (a cut last row is dropped) and only the other images are predicted.

Under `accelerate launch` / `torchrun` each process predicts every world_size-th image into
its own part file `.FILE.partRANK` (JSON lines, resumed the same way); rank 0 merges the
parts into FILE in input order at the end (--out needed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path

from emovlm_kd.apps.cli.flags import add_dtype_flag, inference_dtype


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("predict", help=help_text, description=help_text)
    # --run-dir is the same option for torchrun, whose own --run-path swallows "--run".
    parser.add_argument("--run", "--run-dir", dest="run", required=True, help="a trained run folder")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--format", choices=("table", "json", "csv"),
                        help="table (tab-separated: image, label, probability), json (one object per line) or "
                        "csv; default: what --out's name ends in (.jsonl, .json, .csv), else table")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads decoding images ahead of the model (0: none ahead)")
    parser.add_argument("--explain", action="store_true", help="add a one-sentence explanation by the VLM")
    add_dtype_flag(parser)
    parser.add_argument("--out", help="write to this file instead of standard output (needed under a launcher); "
                        "rerunning the same command after a crash finishes it")
    parser.add_argument("--overwrite", action="store_true", help="start --out over even when it holds another "
                        "command's unfinished predictions")
    parser.set_defaults(func=execute)


class RowWriter:
    """Writes prediction rows as table lines, JSON lines or CSV, one batch per write."""

    def __init__(self, stream, fmt: str, labels: tuple[str, ...], header: bool = True, durable: bool = False):
        self.stream, self.format, self.durable = stream, fmt, durable
        self.header = header and fmt == "csv"
        self.fields = ["image", "label", "error", "explanation"] + [
            f"{part}_{label}" for part in ("probs", "vlm", "head") for label in labels
        ]

    def write(self, rows: list[dict]) -> None:
        # One write per batch: a kill cuts at most the batch being written, never an earlier one.
        self.stream.write(self.csv_text(rows) if self.format == "csv" else "".join(map(self.line, rows)))
        self.stream.flush()
        if self.durable:
            os.fsync(self.stream.fileno())

    def line(self, row: dict) -> str:
        if self.format == "json":
            return json.dumps(row) + "\n"
        if row["error"]:
            return f"{row['image']}\tERROR: {row['error']}\n"
        line = f"{row['image']}\t{row['label']}\t{row['probs'][row['label']]:.3f}"
        return line + ("" if row["explanation"] is None else f"\t{row['explanation']}") + "\n"

    def csv_text(self, rows: list[dict]) -> str:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.fields)
        if self.header:
            writer.writeheader()
            self.header = False
        for row in rows:
            flat = {key: row[key] for key in ("image", "label", "error", "explanation")}
            for part in ("probs", "vlm", "head"):
                flat.update({f"{part}_{label}": p for label, p in row[part].items()})
            writer.writerow(flat)
        return text.getvalue()


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd import distributed
    from emovlm_kd.errors import UserError
    from emovlm_kd.io import check_writable
    from emovlm_kd.pipeline import EmoVLMKD, expand_paths

    args.format = args.format or format_of(args.out)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1.", exit_code=2)
    if args.workers < 0:
        raise UserError("--workers must be 0 or more.", exit_code=2)
    if distributed.launched() and not args.out:
        raise UserError("under a launcher, give --out FILE: the processes' results are merged into it.", exit_code=2)
    paths = expand_paths(args.paths)
    if not paths:
        raise UserError("no image files found in the given paths; give .jpg/.png/... files or folders holding them.")
    if not args.out:
        model = EmoVLMKD.from_pretrained(args.run, dtype=inference_dtype(args.dtype))
        failed = predict_into(model, paths, args, RowWriter(sys.stdout, args.format, model.taxonomy.labels))
        return report(failed, len(paths))
    out = Path(args.out)
    check_writable(out, folder=False)
    # Each process writes its share; alone, it writes FILE itself in the asked format.
    target, fmt = (part_file(out, distributed.rank()), "json") if distributed.launched() else (out, args.format)
    done = resume(out, target, fmt, command_state(args, paths), args.overwrite)
    mine = paths[distributed.rank() :: distributed.world_size()]
    if done:
        print(f"{target}: {len(done)} of {len(mine)} images predicted already, going on with the rest", file=sys.stderr)
    model = EmoVLMKD.from_pretrained(args.run, dtype=inference_dtype(args.dtype))
    with open(target, "a", encoding="utf-8", newline="") as handle:
        # In append mode the position is the file's end: a new (or emptied) file needs its CSV header.
        writer = RowWriter(handle, fmt, model.taxonomy.labels, header=handle.tell() == 0, durable=True)
        failed = sum(done) + predict_into(model, mine, args, writer, skip=len(done))
    if distributed.launched():
        distributed.barrier()
        if not distributed.is_main():
            return 0
        failed = merge_parts(out, args.format, model.taxonomy.labels, len(paths))
    state_file(out).unlink(missing_ok=True)  # finished: the same command reruns from scratch
    print(f"{len(paths)} predictions written to {out}", file=sys.stderr)
    return report(failed, len(paths))


def format_of(out: str | None) -> str:
    """The format a file's name asks for: JSON lines for .jsonl/.ndjson/.json, CSV for .csv, else the table."""
    suffix = Path(out).suffix.lower() if out else ""
    return {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv"}.get(suffix, "table")


def predict_into(model, paths: list[Path], args: argparse.Namespace, writer: RowWriter, skip: int = 0) -> int:
    """Predict `paths` after the first `skip` into `writer`, batch by batch; returns how many failed."""
    failed = 0
    for batch in model.predict_batches(paths, args.batch_size, args.explain, args.workers, skip=skip):
        rows = [prediction.to_dict() for prediction in batch]
        writer.write(rows)
        failed += sum(row["error"] is not None for row in rows)
    return failed


def report(failed: int, total: int) -> int:
    if failed:
        print(f"{failed} of {total} images have no prediction; the error of each says why.", file=sys.stderr)
    return 1 if failed else 0


def part_file(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.name}.part{rank}")


def state_file(out: Path) -> Path:
    return out.with_name(f".{out.name}.state")


def command_state(args: argparse.Namespace, paths: list[Path]) -> dict:
    """What decides the rows of --out: a rerun continues the file only when this is unchanged."""
    from emovlm_kd import distributed

    # The images as printed and as absolute paths: the same names from another folder differ.
    images = hashlib.sha256("".join(f"{path}\0{os.path.abspath(path)}\n" for path in paths).encode()).hexdigest()
    # The precision only where asked for, so that files begun before --dtype existed resume.
    precision = {"dtype": args.dtype} if args.dtype != "auto" else {}
    return {"images": images, "count": len(paths), "run": os.path.abspath(args.run), "format": args.format,
            "explain": args.explain, "processes": distributed.world_size(), **precision}


def resume(out: Path, target: Path, fmt: str, state: dict, overwrite: bool) -> list[bool]:
    """Ready `target` to be appended to; returns, for each row kept from an interrupted run of
    this same command, whether it is an error row. Refuses another command's unfinished file."""
    from emovlm_kd import distributed
    from emovlm_kd.errors import UserError
    from emovlm_kd.io import read_json, write_json

    try:
        previous = read_json(state_file(out))
    except (OSError, ValueError):
        previous = None  # no unfinished run (or an unreadable record of one): start afresh
    if previous not in (None, state) and not overwrite:
        raise UserError(f"{out} holds the unfinished predictions of another command (other images, run, format, "
                        "--explain or number of processes); rerun that command to finish it, or pass --overwrite "
                        "to start it over.")
    continuing = previous == state and not overwrite
    done = keep_whole_rows(target, fmt) if continuing else []
    if not continuing:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    # Every process has read the old state, and emptied its file, before the state names the
    # new command: a crash in between must not mix two commands' rows.
    distributed.barrier()
    if distributed.is_main() and not continuing:
        write_json(state_file(out), state)
    return done


def keep_whole_rows(path: Path, fmt: str) -> list[bool]:
    """Cut a row that a kill left half-written off the end of `path`; returns, for each whole
    row, whether it is an error row."""
    from emovlm_kd.errors import UserError

    data = path.read_bytes() if path.exists() else b""
    whole = data[: data.rfind(b"\n") + 1]
    try:
        errors = error_rows(whole.decode("utf-8"), fmt)
    except (ValueError, KeyError, TypeError, csv.Error):
        raise UserError(f"{path} is damaged, so its predictions cannot be continued; pass --overwrite to "
                        "start it over.") from None
    with open(path, "ab") as handle:
        handle.truncate(len(whole))
    return errors


def error_rows(text: str, fmt: str) -> list[bool]:
    """For each row of an output's text (whole rows only), whether it reports an error."""
    if fmt == "csv":
        return [row["error"] != "" for row in csv.DictReader(io.StringIO(text, newline=""), strict=True)]
    lines = text.split("\n")[:-1]
    if fmt == "json":
        return [json.loads(line)["error"] is not None for line in lines]
    return ["\tERROR: " in line for line in lines]


def merge_parts(out: Path, fmt: str, labels: tuple[str, ...], count: int) -> int:
    """Rank 0: the part files merged into `out` in input order, then removed; returns how many rows are errors."""
    from emovlm_kd import distributed
    from emovlm_kd.io import atomic_write_text

    processes = distributed.world_size()
    rows: list = [None] * count
    for rank in range(processes):
        # Rank r predicted images r, r + processes, r + 2 * processes, ...
        lines = part_file(out, rank).read_text(encoding="utf-8").splitlines()
        rows[rank::processes] = [json.loads(line) for line in lines]
    text = io.StringIO()
    RowWriter(text, fmt, labels).write(rows)
    atomic_write_text(out, text.getvalue())
    for rank in range(processes):
        part_file(out, rank).unlink()
    return sum(row["error"] is not None for row in rows)
