"""Instruction-data records: {image, label, key_elements, reasoning} in JSONL (stage 0 output)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from emovlm_kd.errors import UserError
from emovlm_kd.labels import Taxonomy


@dataclass(frozen=True)
class Annotation:
    image: Path
    label: str
    key_elements: str
    reasoning: str
    flags: tuple[str, ...] = ()


def annotation_flags(label: str, key_elements: str, reasoning: str, taxonomy: Taxonomy) -> tuple[str, ...]:
    """Why a record should not train the model: a missing section, or the answer names its label."""
    flags = []
    if not key_elements.strip():
        flags.append("missing key_elements")
    if not reasoning.strip():
        flags.append("missing reasoning")
    text = f"{key_elements}\n{reasoning}".lower()
    # The label itself, or a known spelling of it ('sad' for sadness), as a whole word.
    names = {label.lower()} | {alias for alias in _spellings(label, taxonomy)}
    if any(re.search(rf"\b{re.escape(name)}\b", text) for name in names):
        flags.append("names the true label")
    return tuple(flags)


def _spellings(label: str, taxonomy: Taxonomy) -> set[str]:
    from emovlm_kd.labels import _ALIASES

    return {alias for alias in _ALIASES.get(label, ()) if len(alias) > 2}


def read_annotations(path: str | Path, taxonomy: Taxonomy, roots: list[Path]) -> list[Annotation]:
    """Records of a JSONL file; relative image paths are looked up under `roots`, then beside the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist; create it with `emovlm-kd annotate` or fix instruct.annotations.")
    records = []
    search = [*roots, path.parent]
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            image, label = data["image"], data["label"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"line {number} of {path} is not a JSON object with 'image' and 'label'; fix or remove that line."
            ) from None
        image_path = Path(image)
        if not image_path.is_absolute():
            image_path = next((root / image for root in search if (root / image).exists()), search[0] / image)
        label = taxonomy.normalise(label)
        key_elements, reasoning = str(data.get("key_elements") or ""), str(data.get("reasoning") or "")
        flags = tuple(data.get("flags") or ()) + annotation_flags(label, key_elements, reasoning, taxonomy)
        records.append(Annotation(image_path.resolve(), label, key_elements, reasoning, tuple(dict.fromkeys(flags))))
    return records
