"""The printed reports of the inputs: `data check` on a dataset and `annotate --check` on an
annotation file. Layout only; light to import (no torch), as those commands are."""

from __future__ import annotations

from collections import Counter

from emovlm_kd.annotate.summary import AnnotationSummary
from emovlm_kd.data.check import DatasetCheck
from emovlm_kd.data.datasets import SPLITS, Dataset


def format_dataset_check(check: DatasetCheck) -> str:
    """`data check`'s report: layout, images per split and class, problems, and the verdict."""
    if check.dataset is None:
        return f"error: {check.error}"
    dataset = check.dataset
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
    lines.append(f"result: NOT usable: {'; '.join(check.reasons)}." if check.reasons else "result: usable.")
    return "\n".join(lines)


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


def format_annotation_summary(summary: AnnotationSummary) -> str:
    """`annotate --check`'s report: records, flagged by reason, per label, models and answer modes."""
    lines = [
        f"{summary.path}: {summary.records} records ({summary.taxonomy.name}), {summary.usable} usable for training, "
        f"{summary.flagged} flagged (left out of training unless instruct.include_flagged=true)"
    ]
    if summary.by_reason:
        lines.append("flagged by reason:")
        width = max(map(len, summary.by_reason))
        lines += [f"  {reason:<{width}}  {count}" for reason, count in summary.by_reason.most_common()]
    lines.append("per label:")
    width = max(len("label"), *map(len, summary.by_label))
    lines.append(f"  {'label':<{width}}  records  usable  flagged")
    for label, (records, flagged) in summary.by_label.items():
        lines.append(f"  {label:<{width}}  {records:>7}  {records - flagged:>6}  {flagged:>7}")
    if summary.models:
        lines.append("models: " + ", ".join(f"{model} ({count})" for model, count in summary.models.most_common()))
    if summary.modes:
        lines.append(format_answer_modes(summary.modes))
    if summary.duplicates:
        lines.append(
            f"{summary.duplicates} record(s) repeat an image already in the file; training uses the last one of each."
        )
    if summary.torn_tail_bytes:
        lines.append(
            f"the last line is cut short ({summary.torn_tail_bytes} bytes, an interrupted write); "
            "the next `emovlm-kd annotate` run on this file removes it and redoes that image."
        )
    return "\n".join(lines)


def format_answer_modes(modes: Counter) -> str:
    """'answers: 80 structured (JSON schema), 4 parsed from text'."""
    return f"answers: {modes['structured']} structured (JSON schema), {modes['parsed']} parsed from text"
