"""Datasets written by Hugging Face `datasets`: `save_to_disk` folders and Parquet files.

Each row holds an image (the `Image` feature's {bytes, path}, raw bytes, or a path) and a
label (a class name, or a `ClassLabel` id). The stages read image files and key their
caches by file content, so each image's bytes are written once into IMAGES_FOLDER beside
the data, named by their SHA-256, and the samples point at those files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image
from tqdm import tqdm

from emovlm_kd.data.layouts import (
    LAYOUT_PARQUET,
    LAYOUT_SAVED,
    PROGRESS_FROM,
    SPLIT_ALIASES,
    Entry,
    is_hidden,
)
from emovlm_kd.errors import UserError

# Hidden, so that the folder scan and `datasets` itself pass over it.
IMAGES_FOLDER = ".emovlm-kd-images"

# Rows read at a time: a few MB of encoded images, never the whole dataset.
_BATCH_ROWS = 256


@dataclass(frozen=True)
class _Part:
    """One split of a `save_to_disk` folder, or one Parquet file."""

    name: str  # how messages name it: "split train" or the file's path
    split: str | None  # train, val or test; None when its name says none
    folder: Path  # where relative image paths start
    features: Any  # datasets.Features
    rows: int
    batches: Callable[[list[str]], Iterator[Any]]  # pyarrow batches of the given columns


def is_saved_dataset(folder: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def parquet_files(folder: Path) -> list[Path]:
    """The .parquet files anywhere under `folder` (hidden folders pruned), sorted."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        found.extend(Path(current, file) for file in files if file.lower().endswith(".parquet"))
    return sorted(found)


def read_arrow_dataset(root: Path, image_column: str, label_column: str) -> tuple[list[Entry], list[str], str]:
    """(entries, problems, layout) of a `save_to_disk` folder, a Parquet file or a folder of them.

    Splits come from the DatasetDict's keys or the Parquet files' names (`train-00000-of-00001`,
    `validation.parquet`, `test/0000.parquet`); a part naming no split is ignored when others
    do, and with none naming one every row is left to be split automatically.
    """
    datasets = _import_datasets(root)
    folder = root.parent if root.is_file() else root
    if is_saved_dataset(root):
        parts, layout = _saved_parts(datasets, root), LAYOUT_SAVED
    else:
        files = [root] if root.is_file() else parquet_files(root)
        parts, layout = [_parquet_part(datasets, file, folder) for file in files], LAYOUT_PARQUET
    parts, problems = _drop_unsplit(parts, root)
    store = folder / IMAGES_FOLDER
    entries = [entry for part in parts for entry in _part_entries(part, store, image_column, label_column)]
    return entries, problems, layout


def _import_datasets(root: Path):
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"reading {root} needs the `datasets` package; install it with pip install 'emovlm-kd[hf-datasets]'."
        ) from None
    return datasets


def _saved_parts(datasets, root: Path) -> list[_Part]:
    try:
        saved = datasets.load_from_disk(str(root))
    except (OSError, ValueError) as error:
        raise UserError(f"{root} is not a readable `save_to_disk` folder ({error}); save the dataset again.") from None
    named = saved.items() if isinstance(saved, datasets.DatasetDict) else [(None, saved)]
    return [
        _Part(
            name=f"split {key}" if key else root.name,
            split=SPLIT_ALIASES.get(key.lower()) if key else None,
            folder=root,
            features=dataset.features,
            rows=dataset.num_rows,
            batches=functools.partial(_dataset_batches, dataset),
        )
        for key, dataset in named
    ]


def _dataset_batches(dataset, columns: list[str]) -> Iterator[Any]:
    return dataset.select_columns(columns).with_format("arrow").iter(batch_size=_BATCH_ROWS)


def _parquet_part(datasets, file: Path, folder: Path) -> _Part:
    import pyarrow.parquet as pq

    name = file.relative_to(folder).as_posix()
    try:
        metadata = pq.read_metadata(file)
    except (OSError, ValueError) as error:
        raise UserError(f"{file} is not a readable Parquet file ({error}); download or write it again.") from None
    return _Part(
        name=name,
        split=_parquet_split(file, folder),
        folder=file.parent,
        # The `huggingface` schema metadata carries the features, ClassLabel names included.
        features=datasets.Features.from_arrow_schema(metadata.schema.to_arrow_schema()),
        rows=metadata.num_rows,
        batches=functools.partial(_parquet_batches, file),
    )


def _parquet_batches(file: Path, columns: list[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS, columns=columns)


# The split a Parquet file's name gives, as the Hub lays them out: `train-00000-of-00001`,
# `test.parquet`, or a split folder (`validation/0000.parquet`).
def _parquet_split(file: Path, folder: Path) -> str | None:
    prefix = re.match(r"[a-z]*", file.stem.lower()).group()
    if prefix in SPLIT_ALIASES:
        return SPLIT_ALIASES[prefix]
    return SPLIT_ALIASES.get(file.parent.name.lower()) if file.parent != folder else None


def _drop_unsplit(parts: list[_Part], root: Path) -> tuple[list[_Part], list[str]]:
    split = [part for part in parts if part.split]
    if not split or len(split) == len(parts):
        return parts, []
    ignored = ", ".join(part.name for part in parts if not part.split)
    return split, [
        f"ignored {ignored} in {root}, which name(s) no split (train, validation or test) while others do; "
        "rename or remove them."
    ]


def _part_entries(part: _Part, store: Path, image_column: str, label_column: str) -> list[Entry]:
    _check_columns(part, image_column, label_column)
    label_feature = part.features[label_column]
    entries: list[Entry] = []
    workers = min(8, os.cpu_count() or 1)
    # Threads: hashing and writing release the GIL.
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=part.rows, desc=f"images of {part.name}", unit="img", file=sys.stderr,
        disable=part.rows < PROGRESS_FROM,
    ) as progress:
        for batch in part.batches([image_column, label_column]):
            images = batch.column(image_column).to_pylist()
            labels = batch.column(label_column).to_pylist()
            rows = range(len(entries), len(entries) + len(labels))
            paths = pool.map(functools.partial(_image_file, part, store, image_column), images, rows)
            names = [_label_name(part, label_column, label_feature, label, row) for label, row in zip(labels, rows)]
            entries.extend((path, name, part.split) for path, name in zip(paths, names))
            progress.update(len(labels))
    return entries


def _check_columns(part: _Part, image_column: str, label_column: str) -> None:
    from datasets import ClassLabel, Value

    columns = list(part.features)
    wanted = {"image": image_column, "label": label_column}
    missing = {kind: column for kind, column in wanted.items() if column not in columns}
    if missing:
        settings = " and ".join(f"data.{kind}_column (--{kind}-column)" for kind in missing)
        raise UserError(
            f"{part.name} has no column {' or '.join(map(repr, missing.values()))} (its columns: "
            f"{', '.join(columns)}); set {settings} to the right {'ones' if len(missing) > 1 else 'one'}."
        )
    feature = part.features[label_column]
    if not isinstance(feature, ClassLabel) and not (
        isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ):
        raise UserError(
            f"column {label_column!r} of {part.name} holds {feature}, neither class names nor ClassLabel ids; "
            "cast it to a ClassLabel with the class names, or to strings."
        )


def _label_name(part: _Part, column: str, feature, value: int | str | None, row: int) -> str:
    if value is None:
        raise UserError(
            f"row {row} of {part.name} has no label in column {column!r}; label every row or drop the unlabelled ones."
        )
    if isinstance(value, str):
        return value
    if not 0 <= value < feature.num_classes:
        raise UserError(
            f"row {row} of {part.name} has label id {value}, which its ClassLabel ({feature.num_classes} names) "
            "does not name; drop the unlabelled rows (a test split without labels, say)."
        )
    return feature.names[value]


# The image file of one row: its bytes stored by content, or (for rows that hold only a
# path, as `to_parquet` writes them) the file it names.
def _image_file(part: _Part, store: Path, column: str, value: Any, row: int) -> Path:
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, path = None, value
    else:
        data, path = value, None
    if isinstance(data, bytes) and data:
        return _store_image(store, data)
    if data is None and path:
        return part.folder / Path(path).expanduser()
    raise UserError(
        f"row {row} of {part.name} has no image in column {column!r}; give every row an image, or name the "
        "image column with data.image_column (--image-column)."
    )


# Writes `data` once as STORE/<sha[:2]>/<sha>.<format> and returns that path. The same
# bytes always give the same file; a temporary file renamed into place means a file under
# its final name is complete, so an interrupted load resumes where it stopped and loads
# running at once (one per training process) agree.
def _store_image(store: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    path = store / digest[:2] / f"{digest}{_suffix(data)}"
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:
        raise UserError(
            f"cannot write images into {store} ({error.strerror}); make that folder writable, "
            "or copy the dataset to a folder that is."
        ) from None
    return path


# The format PIL finds in the header (".png", ".jpeg", ...); ".bin" for bytes it cannot
# identify, which the loader's image check then reports as unreadable.
def _suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f".{image.format.lower()}"
    except (OSError, ValueError, Image.DecompressionBombError):
        return ".bin"
