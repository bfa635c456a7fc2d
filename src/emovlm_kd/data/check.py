"""`data check`: load a dataset, decode every image, and say whether it can be trained on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emovlm_kd.data.datasets import Dataset, load_dataset
from emovlm_kd.errors import UserError


@dataclass
class DatasetCheck:
    """The loaded dataset (None where it could not be read: `error` says why) and the
    reasons it cannot be trained on (none: usable)."""

    dataset: Dataset | None
    error: str | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.error is None and not self.reasons


def check_dataset(
    root: str | os.PathLike[str],
    taxonomy: str | None = None,
    preset: str | None = None,
    strict: bool = False,
    image_column: str = "image",
    label_column: str = "label",
) -> DatasetCheck:
    """Load `root` decoding every image, and collect what makes it unusable.

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
        return DatasetCheck(None, error=str(error))
    check = DatasetCheck(dataset)
    if dataset.unknown_classes:
        check.reasons.append(f"unknown class name(s) {', '.join(map(repr, dataset.unknown_classes))}")
    check.reasons.extend(f"the {split} split is empty" for split in ("train", "test") if not dataset.splits[split])
    if strict and dataset.unreadable:
        check.reasons.append(f"{len(dataset.unreadable)} unreadable image(s) under --strict")
    return check
