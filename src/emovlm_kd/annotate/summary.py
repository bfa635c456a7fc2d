"""`emovlm-kd annotate --check`: what an annotation file holds and what training will use."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from emovlm_kd.annotate.records import read_records, record_flags, run_settings_path
from emovlm_kd.errors import UserError
from emovlm_kd.labels import Taxonomy, get_taxonomy, guess_taxonomy


@dataclass
class AnnotationSummary:
    path: Path
    taxonomy: Taxonomy
    records: int = 0
    flagged: int = 0
    by_reason: Counter = field(default_factory=Counter)
    # label -> [records, flagged]
    by_label: dict[str, list[int]] = field(default_factory=dict)
    models: Counter = field(default_factory=Counter)
    # How the answers were read: "structured" (JSON schema) or "parsed" (from text).
    modes: Counter = field(default_factory=Counter)
    duplicates: int = 0
    torn_tail_bytes: int = 0

    @property
    def usable(self) -> int:
        return self.records - self.flagged


def summarise_annotations(path: str | Path, taxonomy: str | None = None) -> AnnotationSummary:
    """Count an annotation file's records, usable and flagged (by reason and label).

    Flags are those stored with each record plus the checks run again here, so files
    written by hand or by older versions are judged the same way training judges them.
    The taxonomy is `taxonomy`, else the one the writing run saved beside the file, else
    guessed from the labels.
    """
    path = Path(path)
    read = read_records(path)
    if not read.records and read.torn_tail:
        raise UserError(
            f"{path} holds no annotation records; pass a JSONL file written by `emovlm-kd annotate`."
        )
    chosen = get_taxonomy(taxonomy or _taxonomy_of_run(path) or _guess(read.records))
    summary = AnnotationSummary(path, chosen, torn_tail_bytes=len(read.torn_tail))
    summary.by_label = {label: [0, 0] for label in chosen.labels}
    seen: set[str] = set()
    for record in read.records:
        label = chosen.normalise(str(record["label"]))
        flags = record_flags(record, chosen)
        summary.duplicates += record["image"] in seen
        seen.add(record["image"])
        summary.records += 1
        summary.by_label[label][0] += 1
        summary.models[str(record.get("model") or "unknown")] += 1
        if record.get("mode"):
            summary.modes[str(record["mode"])] += 1
        if flags:
            summary.flagged += 1
            summary.by_label[label][1] += 1
            summary.by_reason.update(flags)
    return summary


def _taxonomy_of_run(path: Path) -> str | None:
    # The run that wrote the file saved its settings beside it (see runner.annotate_dataset).
    settings = run_settings_path(path)
    try:
        return json.loads(settings.read_text(encoding="utf-8"))["taxonomy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _guess(records: list[dict]) -> str:
    labels = sorted({str(record["label"]) for record in records})
    return guess_taxonomy(labels).name if labels else "mikels8"
