"""Dataset presets and the one loader that turns a folder tree, a manifest or a table into splits.

Five layouts are read:
  ROOT/{train,val,test}/<class>/<image>   split folders (val carved from train if absent)
  manifest.jsonl / manifest.csv           rows of image path, label and optional split
  ROOT/<class>/<image>                    class folders, split here (seeded, stratified)
  a `datasets` save_to_disk folder        rows of image and label, per split (arrow_datasets)
  a .parquet file or a folder of them     the same, split by file name (arrow_datasets)
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from emovlm_kd.data.layouts import (
    LAYOUT_CLASS_FOLDERS,
    LAYOUT_MANIFEST,
    LAYOUT_PARQUET,
    LAYOUT_SAVED,
    LAYOUT_SPLIT_FOLDERS,
    PROGRESS_FROM,
    SPLIT_ALIASES,
    SPLITS,
    Entry,
    is_hidden,
)
from emovlm_kd.errors import UserError
from emovlm_kd.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    is_image_file,
    load_image,
    verify_image,
)
from emovlm_kd.labels import TAXONOMIES, Taxonomy, get_taxonomy, guess_taxonomy

MANIFEST_SUFFIXES = (".jsonl", ".csv")


# How many unreadable files a problem report names one by one.
_NAMED_UNREADABLE = 5


@dataclass(frozen=True)
class DatasetPreset:
    """A published dataset: its taxonomy, whether it ships a val split, and where to get it."""

    name: str
    taxonomy: str
    has_val_split: bool
    description: str
    source: str


DATASET_PRESETS: dict[str, DatasetPreset] = {
    preset.name: preset
    for preset in (
        DatasetPreset(
            "fi", "mikels8", True,
            "FI (You et al., AAAI 2016): ~23k Flickr and Instagram photos in Mikels' 8 emotions.",
            "request it from the authors of 'Building a Large Scale Dataset for Image Emotion "
            "Recognition: The Fine Print and The Benchmark'.",
        ),
        DatasetPreset(
            "emoset", "mikels8", False,
            "EmoSet-118K (Yang et al., ICCV 2023): 118k images in Mikels' 8 emotions; the paper "
            "carved its val split from train instead of using the official one.",
            "the EmoSet project page (Yang et al., ICCV 2023), which also ships train/val/test JSON files.",
        ),
        DatasetPreset(
            "emotion6", "emotion6", False,
            "Emotion6 (Peng et al., CVPR 2015): 1,980 images in 6 emotions.",
            "the authors of 'A Mixed Bag of Emotions: Model, Predict, and Transfer Emotion Distributions'.",
        ),
        DatasetPreset(
            "artphoto", "mikels8", False,
            "ArtPhoto (Machajdik & Hanbury, ACM MM 2010): 806 artistic photos in Mikels' 8 emotions.",
            "the authors of 'Affective Image Classification using Features Inspired by Psychology "
            "and Art Theory'.",
        ),
        DatasetPreset(
            "abstract", "mikels8", False,
            "Abstract (Machajdik & Hanbury, ACM MM 2010): 228 labelled abstract paintings.",
            "the authors of 'Affective Image Classification using Features Inspired by Psychology "
            "and Art Theory'.",
        ),
        DatasetPreset(
            "flickr", "sentiment2", True,
            "Flickr (Katsurai & Satoh, ICASSP 2016): photos labelled positive or negative.",
            "the authors of 'Image Sentiment Analysis Using Latent Correlations Among Visual, "
            "Textual, and Sentiment Views'.",
        ),
        DatasetPreset(
            "instagram", "sentiment2", True,
            "Instagram (Katsurai & Satoh, ICASSP 2016): photos labelled positive or negative.",
            "the authors of 'Image Sentiment Analysis Using Latent Correlations Among Visual, "
            "Textual, and Sentiment Views'.",
        ),
        DatasetPreset(
            "twitter1", "sentiment2", False,
            "Twitter I (You et al., AAAI 2015): tweeted images labelled positive or negative.",
            "the authors of 'Robust Image Sentiment Analysis Using Progressively Trained and "
            "Domain Transferred Deep Networks'.",
        ),
        DatasetPreset(
            "twitter2", "sentiment2", False,
            "Twitter II (Borth et al., ACM MM 2013): tweeted images labelled positive or negative.",
            "the authors of 'Large-scale Visual Sentiment Ontology and Detectors Using Adjective "
            "Noun Pairs' (SentiBank).",
        ),
    )
}


def get_dataset_preset(name: str) -> DatasetPreset:
    """Look a dataset preset up by name ('fi', 'emoset', 'emotion6', ...)."""
    try:
        return DATASET_PRESETS[name.strip().lower()]
    except KeyError:
        raise UserError(
            f"unknown dataset preset {name!r}; choose one of: {', '.join(DATASET_PRESETS)}."
        ) from None


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, canonical label and split."""

    path: Path
    label: str
    split: str


@dataclass
class Dataset:
    """Labelled images in train/val/test splits, with every problem found while loading.

    `layout` is one of the LAYOUT_* names; `notes` say how splits were carved;
    `unknown_classes` are the folder or manifest names skipped because the taxonomy
    does not know them (only with `skip_unknown_classes=True`).
    """

    root: Path
    taxonomy: Taxonomy
    splits: dict[str, list[Sample]]
    problems: list[str] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    layout: str = LAYOUT_SPLIT_FOLDERS
    notes: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        """The samples of one split ('train', 'val', 'test' or an alias such as 'validation')."""
        split = SPLIT_ALIASES.get(name.strip().lower())
        if split is None:
            raise UserError(f"unknown split {name!r}; use train, val or test.")
        samples = self.splits.get(split, [])
        if not samples:
            raise UserError(_empty_split_message(self.root, split, self.layout))
        return samples

    def label_index(self, sample: Sample) -> int:
        """The class id of a sample: its label's position in the taxonomy."""
        return self.taxonomy.labels.index(sample.label)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and label, every taxonomy label listed (zero when absent)."""
        counts = {split: dict.fromkeys(self.taxonomy.labels, 0) for split in SPLITS}
        for split, samples in self.splits.items():
            for sample in samples:
                counts[split][sample.label] += 1
        return counts


def load_dataset(
    source: str | os.PathLike[str],
    *,
    taxonomy: str | None = None,
    preset: str | None = None,
    strict: bool = False,
    verify: bool = True,
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    decode: bool = False,
    skip_unknown_classes: bool = False,
    image_column: str = "image",
    label_column: str = "label",
) -> Dataset:
    """Read a dataset folder, manifest, `save_to_disk` folder or Parquet data into splits.

    Class names are normalised through `taxonomy` (else the preset's, else guessed from the
    names). Without a val split, a stratified `val_fraction` of train is carved with `seed`;
    class folders without any split also lose a stratified `test_fraction` to test.
    With `verify`, each image's header is checked (with `decode`, each image is fully
    decoded, which also finds truncated files); unreadable images are skipped and named in
    `problems`, or raise `UserError` when `strict`. Unknown class names raise `UserError`
    unless `skip_unknown_classes`, which skips their images and records a problem instead.
    Rows of `datasets` tables take their image and label from `image_column` and
    `label_column`; their images are written once into the dataset's folder (see
    `arrow_datasets`).
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise UserError(f"{name} must be at least 0 and below 1, got {fraction}; pass e.g. 0.1.")
    root = Path(source).expanduser().absolute()
    taxonomy_name = _taxonomy_name(taxonomy, preset)
    entries, problems, layout = _read_entries(root, image_column, label_column)
    if not entries:
        problems.append(
            f"found no images in {root}; expected ROOT/<class>/<image>, "
            "ROOT/{train,val,test}/<class>/<image> or a manifest."
        )

    names = sorted({name for _, name, _ in entries})
    chosen = get_taxonomy(taxonomy_name) if taxonomy_name else _guess_taxonomy(names)
    try:
        label_of = chosen.normalise_all(names)
    except UserError as error:
        if not skip_unknown_classes:
            raise
        problems.append(str(error))
        label_of = {name: chosen.normalise(name) for name in names if _accepts(chosen, name)}
    unknown_classes = [name for name in names if name not in label_of]

    probe = load_image if decode else verify_image if verify else _require_file
    failures = _probe_all([path for path, name, _ in entries if name in label_of], probe)
    if failures and strict:
        raise UserError(
            f"{len(failures)} image(s) in {root} are unreadable (first: {min(failures)}); "
            "fix or delete them, or load without strict to skip them."
        )
    problems.extend(_unreadable_problems(list(failures.values())))

    assigned: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    unsplit: list[Sample] = []
    for path, name, split in entries:
        if name not in label_of or path in failures:
            continue
        sample = Sample(path, label_of[name], split or "")
        (assigned[split] if split else unsplit).append(sample)

    notes: list[str] = []
    if unsplit:
        # Class folders (or a manifest without splits): test first, then val from the rest.
        assigned["test"], assigned["train"] = _carve(unsplit, test_fraction, f"{seed}:test")
        notes.append(f"test: {test_fraction:.0%} of each class, carved with seed {seed}.")
    if not assigned["val"] and assigned["train"] and val_fraction > 0:
        assigned["val"], assigned["train"] = _carve(assigned["train"], val_fraction, f"{seed}:val")
        notes.append(f"val: {val_fraction:.0%} of train per class, carved with seed {seed}.")
        if preset and get_dataset_preset(preset).has_val_split:
            problems.append(
                f"preset {preset} ships a val split but {root} has none, so val was carved from "
                "train; add the official val split to compare with published results."
            )

    splits = {
        split: sorted((Sample(s.path, s.label, split) for s in samples), key=lambda s: str(s.path))
        for split, samples in assigned.items()
    }
    problems.extend(
        _empty_split_message(root, split, layout) for split in ("train", "test") if not splits[split]
    )
    return Dataset(
        root=root,
        taxonomy=chosen,
        splits=splits,
        problems=problems,
        unreadable=sorted(failures),
        layout=layout,
        notes=notes,
        unknown_classes=unknown_classes,
    )


# A count, then the first few messages, so a folder of broken files stays readable.
def _unreadable_problems(messages: list[str]) -> list[str]:
    if not messages:
        return []
    shown = messages[:_NAMED_UNREADABLE]
    more = f"; the first {len(shown)} follow" if len(messages) > len(shown) else ""
    return [f"skipped {len(messages)} unreadable image(s){more}."] + shown


def _taxonomy_name(taxonomy: str | None, preset: str | None) -> str | None:
    if preset is None:
        return taxonomy
    preset_taxonomy = get_dataset_preset(preset).taxonomy
    if taxonomy is not None and get_taxonomy(taxonomy).name != preset_taxonomy:
        raise UserError(
            f"preset {preset} uses taxonomy {preset_taxonomy} but taxonomy {taxonomy} was asked "
            "for; pass only one of them."
        )
    return preset_taxonomy


def _accepts(taxonomy: Taxonomy, name: str) -> bool:
    try:
        taxonomy.normalise(name)
    except UserError:
        return False
    return True


def _guess_taxonomy(names: list[str]) -> Taxonomy:
    try:
        return guess_taxonomy(names)
    except UserError:
        # No taxonomy takes every name: pick the one taking the most, so the error (or the
        # skip list) names only the names that really do not fit.
        return max(TAXONOMIES.values(), key=lambda t: sum(_accepts(t, name) for name in names))




def _read_entries(root: Path, image_column: str, label_column: str) -> tuple[list[Entry], list[str], str]:
    from emovlm_kd.data.arrow_datasets import is_saved_dataset, parquet_files, read_arrow_dataset

    if not root.exists():
        raise UserError(
            f"dataset {root} does not exist; pass a dataset folder or a .jsonl, .csv or .parquet file."
        )
    if root.is_file() and root.suffix.lower() in MANIFEST_SUFFIXES:
        return _read_manifest(root), [], LAYOUT_MANIFEST
    if root.is_file() and root.suffix.lower() != ".parquet":
        raise UserError(
            f"{root} is a file but not a .jsonl or .csv manifest or a .parquet file; "
            "pass one of those or a dataset folder."
        )
    if root.is_file() or is_saved_dataset(root) or parquet_files(root):
        return read_arrow_dataset(root, image_column, label_column)
    return _scan_folders(root)


def _scan_folders(root: Path) -> tuple[list[Entry], list[str], str]:
    children = _visible_dirs(root)
    split_dirs = [child for child in children if child.name.lower() in SPLIT_ALIASES]
    entries: list[Entry] = []
    problems: list[str] = []
    non_images: list[Path] = []
    if split_dirs:
        others = [child.name for child in children if child not in split_dirs]
        if others:
            problems.append(
                f"ignored folder(s) {', '.join(others)} beside the split folders in {root}; "
                "move their images into train/, val/ or test/ class folders."
            )
        class_parents = [(folder, SPLIT_ALIASES[folder.name.lower()]) for folder in split_dirs]
        layout = LAYOUT_SPLIT_FOLDERS
    else:
        nested = [child.name for child in children if any(
            grandchild.name.lower() in SPLIT_ALIASES for grandchild in _visible_dirs(child)
        )]
        if nested:
            raise UserError(
                f"{root} holds dataset folders ({', '.join(nested)}) rather than class folders; "
                f"pass one of them, e.g. {root / nested[0]}."
            )
        class_parents = [(root, None)]
        layout = LAYOUT_CLASS_FOLDERS
    for parent, split in class_parents:
        loose = [path for path in parent.iterdir() if path.is_file() and is_image_file(path)]
        if loose:
            where = parent.relative_to(root).as_posix() if parent != root else "the dataset root"
            problems.append(
                f"ignored {len(loose)} image(s) lying directly in {where}; "
                "move them into a folder named after their class."
            )
        for class_dir in _visible_dirs(parent):
            images, others = _walk_files(class_dir)
            entries.extend((path, class_dir.name, split) for path in images)
            non_images.extend(others)
    if non_images:
        example = non_images[0].relative_to(root).as_posix()
        problems.append(
            f"ignored {len(non_images)} file(s) that are not images (e.g. {example}); "
            f"convert them to one of {', '.join(IMAGE_EXTENSIONS)} if they should be used."
        )
    return entries, problems, layout


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir() if path.is_dir() and not is_hidden(path.name)
    )




# (images, other visible files) anywhere under `folder`, hidden folders pruned.
def _walk_files(folder: Path) -> tuple[list[Path], list[Path]]:
    images: list[Path] = []
    others: list[Path] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for file in sorted(files):
            if is_hidden(file):
                continue
            path = Path(current, file)
            (images if is_image_file(path) else others).append(path)
    return images, others


def _read_manifest(manifest: Path) -> list[Entry]:
    rows = list(_manifest_rows(manifest))
    with_split = [line for line, row in rows if row.get("split")]
    if with_split and len(with_split) != len(rows):
        line = next(line for line, row in rows if not row.get("split"))
        raise UserError(
            f"{manifest.name} line {line} has no split while other rows have one; "
            "give every row a split (train, val or test) or none at all."
        )
    entries: list[Entry] = []
    for line, row in rows:
        image = row.get("image") or row.get("path")
        label = row.get("label")
        if not image or not label:
            raise UserError(
                f"{manifest.name} line {line} lacks {'an image path' if not image else 'a label'}; "
                "give every row an 'image' (or 'path') and a 'label'."
            )
        split = None
        if with_split:
            split = SPLIT_ALIASES.get(row["split"].lower())
            if split is None:
                raise UserError(
                    f"{manifest.name} line {line} has split {row['split']!r}; use train, val or test."
                )
        path = Path(image).expanduser()
        entries.append((path if path.is_absolute() else manifest.parent / path, label, split))
    return entries


# (line number, row with lower-cased keys and stripped string values) per record.
def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with open(manifest, encoding="utf-8-sig", newline="") as file:
        if manifest.suffix.lower() == ".csv":
            for line, record in enumerate(csv.DictReader(file), start=2):
                yield line, _clean(record)
            return
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{manifest.name} line {line} is not valid JSON ({error.msg}); fix or remove that line."
                ) from None
            if not isinstance(record, dict):
                raise UserError(
                    f"{manifest.name} line {line} is not a JSON object; write one "
                    '{"image": ..., "label": ...} object per line.'
                )
            yield line, _clean(record)


def _clean(record: dict) -> dict[str, str]:
    return {
        str(key).strip().lower(): str(value).strip()
        for key, value in record.items()
        if key is not None and value is not None
    }


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ImageError(f"image {path} does not exist; fix its path in the manifest or remove the row.")


# Runs `probe` on every path and returns the failures' messages by path. Threads,
# because PIL decodes and reads files without holding the GIL.
def _probe_all(paths: list[Path], probe: Callable[[Path], object]) -> dict[Path, str]:

    def attempt(path: Path) -> str | None:
        try:
            probe(path)
        except ImageError as error:
            return str(error)
        return None

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        messages = list(tqdm(
            pool.map(attempt, paths),
            total=len(paths),
            desc="checking images",
            unit="img",
            file=sys.stderr,
            disable=len(paths) < PROGRESS_FROM,
        ))
    return {path: message for path, message in zip(paths, messages) if message}


# Splits off `fraction` of each label, the same every time: (carved, kept). Each label is
# sorted by path (the dataset's own prefix is common to all, so moving the dataset keeps
# the order), then shuffled by a Random seeded from `seed` and the label: string seeds go
# through SHA-512, unlike hash(), so runs and machines agree.
def _carve(samples: list[Sample], fraction: float, seed: str) -> tuple[list[Sample], list[Sample]]:
    by_label: dict[str, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    carved: list[Sample] = []
    kept: list[Sample] = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda sample: sample.path.as_posix())
        random.Random(f"{seed}:{label}").shuffle(group)
        # Every label with 2+ images gives at least one and keeps at least one.
        take = min(len(group) - 1, max(1, round(len(group) * fraction))) if fraction > 0 else 0
        carved.extend(group[:take])
        kept.extend(group[take:])
    return carved, kept


def _empty_split_message(root: Path, split: str, layout: str) -> str:
    if layout == LAYOUT_MANIFEST:
        return (
            f"the {split} split is empty: no usable row of {root.name} has split {split}; "
            f"add rows with split {split}, or drop the split column to split automatically."
        )
    if layout in (LAYOUT_SAVED, LAYOUT_PARQUET):
        return (
            f"the {split} split is empty: {root} has no usable rows in a {split} split; add one (a "
            f"{split}-*.parquet file or a DatasetDict key), or name no splits at all to split automatically."
        )
    if layout == LAYOUT_CLASS_FOLDERS:
        return (
            f"the {split} split is empty: {root} has too few usable images to carve one; "
            "add images to the class folders."
        )
    return (
        f"the {split} split is empty: {root} has no usable images under {split}/<class>/; "
        f"add them, or put the class folders directly in {root} to split automatically."
    )
