"""Hugging Face `datasets` data as `data.root`: save_to_disk folders and Parquet files."""

import io
import json
from pathlib import Path

import datasets
import pytest
from fast_runs import fast_config, subset_manifest, train_and_evaluate
from PIL import Image

from emovlm_kd.apps import cli
from emovlm_kd.data import load_dataset
from emovlm_kd.data.arrow_datasets import IMAGES_FOLDER
from emovlm_kd.errors import UserError

NAMES = ["sad", "Content", "Amusement"]


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 40, 200 - shade)).save(buffer, format="PNG")
    return buffer.getvalue()


def table(labels: list, first_shade: int = 0, label_feature=None, image="image", label="label") -> datasets.Dataset:
    """One distinct in-memory image per label, with an Image feature and the given label feature."""
    features = datasets.Features({image: datasets.Image(), label: label_feature or datasets.Value("string")})
    images = [Image.open(io.BytesIO(png_bytes(first_shade + 5 * i))) for i in range(len(labels))]
    return datasets.Dataset.from_dict({image: images, label: labels}, features=features)


def class_ids(ids: list[int], first_shade: int = 0) -> datasets.Dataset:
    return table(ids, first_shade, datasets.ClassLabel(names=NAMES))


def stored_files(folder: Path) -> list[Path]:
    return sorted(path for path in (folder / IMAGES_FOLDER).rglob("*") if path.is_file())


def test_saved_dataset_dict_takes_its_splits_and_class_label_names(tmp_path):
    saved = datasets.DatasetDict(
        train=class_ids([0, 1, 2, 0, 1, 2]),
        validation=class_ids([2, 1], first_shade=100),
        test=class_ids([0, 0, 1], first_shade=150),
    )
    saved.save_to_disk(tmp_path / "hf")

    dataset = load_dataset(tmp_path / "hf")

    assert dataset.layout == "datasets save_to_disk folder"
    assert dataset.taxonomy.name == "mikels8" and dataset.notes == [] and dataset.problems == []
    counts = dataset.counts()
    assert counts["train"]["sadness"] == counts["train"]["contentment"] == counts["train"]["amusement"] == 2
    assert counts["val"]["amusement"] == counts["val"]["contentment"] == 1
    assert counts["test"]["sadness"] == 2
    for split, samples in dataset.splits.items():
        for sample in samples:
            assert sample.split == split
            assert sample.path.parent.parent == tmp_path / "hf" / IMAGES_FOLDER
            assert sample.path.name.startswith(sample.path.parent.name) and sample.path.suffix == ".png"
    # ClassLabel id 2 is "Amusement": the image stored for the first val row is its own bytes.
    first_val = next(s for s in dataset.split("val") if s.label == "amusement")
    assert first_val.path.read_bytes() == png_bytes(100)


def test_a_saved_dataset_without_splits_is_split_automatically(tmp_path):
    table(["sad", "content"] * 10).save_to_disk(tmp_path / "hf")

    dataset = load_dataset(tmp_path / "hf", seed=3)

    assert [len(dataset.splits[split]) for split in ("train", "val", "test")] == [14, 2, 4]
    assert [note.split(":")[0] for note in dataset.notes] == ["test", "val"]
    assert load_dataset(tmp_path / "hf", seed=3).splits == dataset.splits


def test_parquet_folder_takes_splits_from_hub_file_names(tmp_path):
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    table(["sad", "Content"] * 5).to_parquet(data / "train-00000-of-00001.parquet")
    table(["Content", "sad"], first_shade=120).to_parquet(data / "test-00000-of-00001.parquet")

    dataset = load_dataset(tmp_path / "repo")

    assert dataset.layout == "parquet"
    assert [len(dataset.splits[split]) for split in ("train", "val", "test")] == [8, 2, 2]
    assert dataset.notes == ["val: 10% of train per class, carved with seed 42."]
    assert {s.path.parent.parent for s in dataset.split("test")} == {tmp_path / "repo" / IMAGES_FOLDER}


def test_a_parquet_file_naming_no_split_beside_split_files_is_ignored(tmp_path):
    table(["sad", "Content"] * 3).to_parquet(tmp_path / "train.parquet")
    table(["sad", "Content"], first_shade=100).to_parquet(tmp_path / "validation.parquet")
    table(["sad", "Content"], first_shade=120).to_parquet(tmp_path / "test.parquet")
    table(["sad"], first_shade=140).to_parquet(tmp_path / "extra.parquet")

    dataset = load_dataset(tmp_path)

    assert [len(dataset.splits[split]) for split in ("train", "val", "test")] == [6, 2, 2]
    assert len(dataset.problems) == 1 and "ignored extra.parquet" in dataset.problems[0]


def test_single_parquet_file_with_custom_columns_and_class_label_ids(tmp_path):
    rows = table([0, 1, 2] * 4, label_feature=datasets.ClassLabel(names=NAMES), image="picture", label="emotion")
    rows.to_parquet(tmp_path / "emotions.parquet")

    dataset = load_dataset(tmp_path / "emotions.parquet", image_column="picture", label_column="emotion")

    assert dataset.layout == "parquet"
    assert sum(len(samples) for samples in dataset.splits.values()) == 12
    assert {s.label for s in dataset.split("train")} == {"sadness", "contentment", "amusement"}
    # A file's images go beside it, as a manifest's paths are relative to its folder.
    assert len(stored_files(tmp_path)) == 12


def test_images_are_stored_once_by_content_and_reused(tmp_path):
    rows = table(["sad", "sad", "content", "content"])
    # Rows 0 and 2 hold the same bytes: one file serves both.
    rows = datasets.concatenate_datasets([rows, rows.select([0, 2])])
    rows.save_to_disk(tmp_path / "hf")

    first = load_dataset(tmp_path / "hf", val_fraction=0, test_fraction=0)
    files = stored_files(tmp_path / "hf")
    stamps = [path.stat().st_mtime_ns for path in files]
    again = load_dataset(tmp_path / "hf", val_fraction=0, test_fraction=0)

    assert len(files) == 4 and not any(path.name.endswith(".tmp") for path in files)
    assert len({s.path for s in first.split("train")}) == 4 and len(first.split("train")) == 6
    assert again.splits == first.splits
    assert [path.stat().st_mtime_ns for path in stored_files(tmp_path / "hf")] == stamps


def test_rows_holding_only_a_path_point_at_that_file(tmp_path):
    for i, label in enumerate(["sad", "content"] * 2):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / f"{label}{i}.png").write_bytes(png_bytes(10 * i))
    listing = {"image": [f"images/{label}{i}.png" for i, label in enumerate(["sad", "content"] * 2)],
               "label": ["sad", "content"] * 2}
    # Parquet keeps the Image feature's path and no bytes for images given as paths.
    datasets.Dataset.from_dict(listing).to_parquet(tmp_path / "train.parquet")

    dataset = load_dataset(tmp_path / "train.parquet")

    assert {s.path for s in dataset.split("train")} <= {tmp_path / name for name in listing["image"]}
    assert stored_files(tmp_path) == []


def test_bytes_that_are_no_image_are_skipped_as_unreadable(tmp_path):
    listing = {"image": [png_bytes(shade) for shade in (0, 50, 100)] + [b"not an image"],
               "label": ["sad", "sad", "content", "content"]}
    datasets.Dataset.from_dict(listing).to_parquet(tmp_path / "train.parquet")

    dataset = load_dataset(tmp_path / "train.parquet", val_fraction=0)

    assert len(dataset.split("train")) == 3
    assert [path.suffix for path in dataset.unreadable] == [".bin"]
    assert dataset.problems[0] == "skipped 1 unreadable image(s)."
    with pytest.raises(UserError, match="1 image.* unreadable"):
        load_dataset(tmp_path / "train.parquet", strict=True)


def test_a_row_without_an_image_is_an_error(tmp_path):
    datasets.Dataset.from_dict({"image": [png_bytes(0), None], "label": ["sad", "sad"]}).to_parquet(
        tmp_path / "train.parquet"
    )

    with pytest.raises(UserError, match=r"^row 1 of train.parquet has no image in column 'image'; "):
        load_dataset(tmp_path / "train.parquet")


def test_an_unknown_label_is_an_error_naming_it(tmp_path):
    table(["sad", "Content", "grumpy"]).save_to_disk(tmp_path / "hf")

    with pytest.raises(UserError, match=r"unknown class name\(s\) 'grumpy' for taxonomy mikels8"):
        load_dataset(tmp_path / "hf")
    skipped = load_dataset(tmp_path / "hf", skip_unknown_classes=True)
    assert skipped.unknown_classes == ["grumpy"]


def test_a_missing_column_is_one_sentence_naming_the_columns(tmp_path):
    table(["sad"], image="img", label="emotion").to_parquet(tmp_path / "train.parquet")

    with pytest.raises(UserError) as error:
        load_dataset(tmp_path / "train.parquet", image_column="img")

    message = str(error.value)
    assert message == (
        "train.parquet has no column 'label' (its columns: img, emotion); set data.label_column (--label-column) "
        "to the right one."
    )


@pytest.mark.parametrize(
    ("labels", "feature", "message"),
    [
        # -1 is how `datasets` marks an unlabelled row, as in many Hub test splits.
        ([0, -1], datasets.ClassLabel(names=NAMES), r"row 1 of split train has label id -1, which its ClassLabel"),
        (["sad", None], None, r"row 1 of split train has no label in column 'label'"),
        ([0, 1], datasets.Value("int64"), r"column 'label' of split train holds .*int64.*cast it to a ClassLabel"),
    ],
)
def test_labels_that_name_no_class_are_errors(tmp_path, labels, feature, message):
    datasets.DatasetDict(train=table(labels, label_feature=feature)).save_to_disk(tmp_path / "hf")

    with pytest.raises(UserError, match=message):
        load_dataset(tmp_path / "hf")


def test_data_check_reads_parquet_with_column_flags(tmp_path, capsys):
    table(["sad", "Content"] * 6, image="img", label="emotion").to_parquet(tmp_path / "train.parquet")
    table(["sad", "Content"], first_shade=100, image="img", label="emotion").to_parquet(tmp_path / "test.parquet")

    code = cli.main(["data", "check", str(tmp_path), "--image-column", "img", "--label-column", "emotion"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert "layout    parquet, taxonomy mikels8" in out and "result: usable." in out

    code = cli.main(["data", "check", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    assert (out + err).strip().splitlines() == [
        "error: test.parquet has no column 'image' or 'label' (its columns: img, emotion); set data.image_column "
        "(--image-column) and data.label_column (--label-column) to the right ones."
    ]


def test_a_run_trains_from_a_parquet_dataset(sample_root, tmp_path):

    manifest = subset_manifest(sample_root, "parquet.jsonl", {"train": 3, "val": 1, "test": 1})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    parquet = tmp_path / "sample-parquet"
    (parquet / "data").mkdir(parents=True)
    for split, file_split in (("train", "train"), ("val", "validation"), ("test", "test")):
        chosen = [row for row in rows if row["split"] == split]
        listing = {
            "picture": [{"bytes": (sample_root / row["image"]).read_bytes(), "path": None} for row in chosen],
            "emotion": [row["label"] for row in chosen],
        }
        features = datasets.Features({"picture": datasets.Image(), "emotion": datasets.Value("string")})
        datasets.Dataset.from_dict(listing, features=features).to_parquet(
            parquet / "data" / f"{file_split}-00000-of-00001.parquet"
        )

    config = fast_config(parquet, tmp_path / "cache", "data.image_column=picture", "data.label_column=emotion")
    run, metrics = train_and_evaluate(config, tmp_path / "run")

    assert run.dataset.layout == "parquet"
    assert {split: len(run.dataset.split(split)) for split in ("train", "val", "test")} == {"train": 18, "val": 6, "test": 6}
    assert metrics["images"] == 6
    # Every split's labels came through the custom column, in the sample's own order.
    assert sorted(run.dataset.label_index(s) for s in run.dataset.split("test")) == list(range(6))
