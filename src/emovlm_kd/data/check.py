"""`data check`: load a dataset, decode every image, and report counts and problems."""

from __future__ import annotations

import os

from emovlm_kd.data.datasets import SPLITS, Dataset, load_dataset
from emovlm_kd.errors import UserError


def check_dataset(
    root: str | os.PathLike[str],
    taxonomy: str | None = None,
    preset: str | None = None,
    strict: bool = False,
    image_column: str = "image",
    label_column: str = "label",
) -> tuple[str, int]:
    """Report images per split and class and every problem; exit code 0 if usable, else 1.

    Unusable: a class name the taxonomy does not know, an empty train or test split, an
    unreadable path or manifest, or (with `strict`) any image that fails to decode.
    `image_column` and `label_column` name the columns of `datasets` tables.
    """
    try:
        dataset = load_dataset(
            root, taxonomy=taxonomy, preset=preset, decode=True, skip_unknown_classes=True,
            image_column=image_column, label_column=label_column,
        )
    except UserError as error:
        return f"error: {error}", 1

    reasons = []
    if dataset.unknown_classes:
        reasons.append(f"unknown class name(s) {', '.join(map(repr, dataset.unknown_classes))}")
    reasons.extend(f"the {split} split is empty" for split in ("train", "test") if not dataset.splits[split])
    if strict and dataset.unreadable:
        reasons.append(f"{len(dataset.unreadable)} unreadable image(s) under --strict")

    lines = [
        f"dataset   {dataset.root}",
        f"layout    {dataset.layout}, taxonomy {dataset.taxonomy.name} ({len(dataset.taxonomy)} classes)",
        *(f"          {note}" for note in dataset.notes),
        "",
        *_count_table(dataset),
        "",
    ]
    if dataset.unreadable:
        lines.append(f"unreadable images skipped: {len(dataset.unreadable)}")
    if dataset.problems:
        lines.append(f"problems ({len(dataset.problems)}):")
        lines.extend(f"  - {problem}" for problem in dataset.problems)
    else:
        lines.append("problems: none")
    if reasons:
        lines.append(f"result: NOT usable: {'; '.join(reasons)}.")
    else:
        lines.append("result: usable.")
    return "\n".join(lines), 1 if reasons else 0


def _count_table(dataset: Dataset) -> list[str]:
    counts = dataset.counts()
    width = max(len("class"), *(len(label) for label in dataset.taxonomy.labels))
    columns = [*SPLITS, "total"]

    def row(name: str, values: list[int]) -> str:
        return f"{name:<{width}}" + "".join(f"{value:>8}" for value in values)

    header = f"{'class':<{width}}" + "".join(f"{column:>8}" for column in columns)
    rows = [header]
    for label in dataset.taxonomy.labels:
        per_split = [counts[split][label] for split in SPLITS]
        rows.append(row(label, [*per_split, sum(per_split)]))
    totals = [sum(counts[split].values()) for split in SPLITS]
    rows.append(row("total", [*totals, sum(totals)]))
    return rows
