"""The dataset layouts and split names that the folder and Arrow readers share."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "val", "test")

# Folder names and manifest values seen in the wild, lower-cased.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

LAYOUT_SPLIT_FOLDERS = "split folders"
LAYOUT_CLASS_FOLDERS = "class folders"
LAYOUT_MANIFEST = "manifest"
LAYOUT_SAVED = "datasets save_to_disk folder"
LAYOUT_PARQUET = "parquet"

# Below this many images a progress bar would only flicker.
PROGRESS_FROM = 500

Entry = tuple[Path, str, "str | None"]  # (image path, class name as written, split or None)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"
