import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from emovlm_kd.data import (
    DATASET_PRESETS,
    SPLITS,
    Sample,
    get_dataset_preset,
    load_dataset,
)
from emovlm_kd.errors import UserError


def write_image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)
    return path


def make_tree(root: Path, counts: dict[str, int]) -> Path:
    """counts: {'train/sad': 3, ...}: that many PNGs in each folder."""
    for folder, count in counts.items():
        for i in range(count):
            write_image(root / folder / f"img{i:03d}.png")
    return root


def relative(samples, root):
    return [s.path.relative_to(root).as_posix() for s in samples]


def test_split_folders_are_read_in_order_with_counts(tmp_path):
    root = make_tree(tmp_path, {"Train/sadness": 3, "Train/awe": 2, "Validation/awe": 1, "TEST/sadness": 2})

    dataset = load_dataset(root)

    assert list(dataset.splits) == ["train", "val", "test"]
    assert dataset.taxonomy.name == "mikels8"
    counts = dataset.counts()
    assert counts["train"]["sadness"] == 3 and counts["train"]["awe"] == 2
    assert counts["val"] == {**dict.fromkeys(dataset.taxonomy.labels, 0), "awe": 1}
    assert counts["test"]["sadness"] == 2
    for split, samples in dataset.splits.items():
        assert samples == sorted(samples, key=lambda s: str(s.path))
        assert {s.split for s in samples} == {split}
    assert dataset.problems == [] and dataset.notes == []
    sample = dataset.split("test")[0]
    assert sample == Sample(root / "TEST/sadness/img000.png", "sadness", "test")
    assert dataset.label_index(sample) == dataset.taxonomy.labels.index("sadness") == 7


def test_folder_names_are_normalised_and_taxonomy_guessed(tmp_path):
    root = make_tree(tmp_path, {"train/Sad": 2, "train/happy": 2, "test/Sad": 1, "test/HAPPY": 1})

    dataset = load_dataset(root, val_fraction=0)

    assert dataset.taxonomy.name == "emotion6"
    assert {s.label for s in dataset.split("train")} == {"sadness", "joy"}
    assert {s.label for s in dataset.split("test")} == {"sadness", "joy"}


def test_val_is_carved_from_train_stratified_and_repeatable(tmp_path):
    root = make_tree(tmp_path, {"train/amusement": 30, "train/fear": 20, "test/fear": 1})
    original = {p.relative_to(root).as_posix() for p in root.glob("train/*/*.png")}

    first = load_dataset(root)
    second = load_dataset(root)

    assert first.splits == second.splits
    assert first.counts()["val"]["amusement"] == 3 and first.counts()["val"]["fear"] == 2
    train, val = relative(first.split("train"), root), relative(first.split("val"), root)
    assert set(train).isdisjoint(val) and set(train) | set(val) == original
    assert any("val: 10% of train" in note for note in first.notes)
    # The carved images are a shuffle, not simply the first files by name.
    assert relative(first.split("val"), root) != [f"train/amusement/img{i:03d}.png" for i in range(3)] + [
        f"train/fear/img{i:03d}.png" for i in range(2)
    ]
    other_seed = load_dataset(root, seed=7)
    assert set(relative(other_seed.split("val"), root)) != set(val)


def test_class_folders_get_a_seeded_stratified_split_that_survives_a_move(tmp_path):
    root = make_tree(tmp_path / "a", {"positive": 20, "Negatives": 10, "__MACOSX/positive": 2, ".git/x": 1})
    (root / "positive" / ".DS_Store").write_bytes(b"junk")
    (root / "positive" / "._img000.png").write_bytes(b"resource fork")

    dataset = load_dataset(root)

    assert dataset.taxonomy.name == "sentiment2"
    counts = dataset.counts()
    assert counts["test"] == {"positive": 4, "negative": 2}
    assert counts["val"] == {"positive": 2, "negative": 1}
    assert counts["train"] == {"positive": 14, "negative": 7}
    assert dataset.problems == []  # hidden files and __MACOSX are silently ignored

    moved = Path(shutil.copytree(root, tmp_path / "elsewhere" / "b"))
    again = load_dataset(moved)
    for split in SPLITS:
        assert relative(again.splits[split], moved) == relative(dataset.splits[split], root)


def test_seeded_split_is_pinned(tmp_path):
    # Golden values: a split must not change across runs, machines or Python hash seeds,
    # or published results stop being comparable.
    root = make_tree(tmp_path, {"awe": 10, "fear": 10})
    dataset = load_dataset(root)
    assert relative(dataset.split("test"), root) == [
        "awe/img001.png", "awe/img005.png", "fear/img008.png", "fear/img009.png"
    ]
    assert relative(dataset.split("val"), root) == ["awe/img006.png", "fear/img006.png"]


def test_tiny_classes_still_reach_every_split(tmp_path):
    root = make_tree(tmp_path, {"anger": 3, "disgust": 3})
    counts = load_dataset(root).counts()
    assert all(counts[split]["anger"] == 1 for split in SPLITS)


def test_jsonl_manifest_with_splits_relative_and_absolute_paths(tmp_path):
    write_image(tmp_path / "imgs/a.png")
    write_image(tmp_path / "imgs/b.png")
    outside = write_image(tmp_path / "other/c.png")
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.parent.mkdir()
    rows = [
        {"image": "../imgs/a.png", "label": "Angry", "split": "train"},
        {"path": "../imgs/b.png", "label": "fear", "split": "Validation"},
        {"image": str(outside), "label": "anger", "split": "test"},
    ]
    manifest.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")

    dataset = load_dataset(manifest)

    assert [s.path for s in dataset.split("train")] == [manifest.parent / "../imgs/a.png"]
    assert [(s.label, s.split) for s in dataset.split("val")] == [("fear", "val")]
    assert [s.path for s in dataset.split("test")] == [outside]
    assert dataset.layout == "manifest" and dataset.problems == []


def test_csv_manifest_without_split_is_split_automatically(tmp_path):
    with open(tmp_path / "labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        for i in range(10):
            writer.writerow([write_image(tmp_path / f"x{i}.png").name, "awe" if i % 2 else "Content"])

    dataset = load_dataset(tmp_path / "labels.csv")

    assert dataset.counts()["test"] == {**dict.fromkeys(dataset.taxonomy.labels, 0), "awe": 1, "contentment": 1}
    assert sum(len(samples) for samples in dataset.splits.values()) == 10


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"image": "a.png", "label": "awe"}', "{not json"], "line 2 is not valid JSON"),
        (['{"image": "a.png", "label": "awe", "split": "holdout"}'], "split 'holdout'; use train, val or test"),
        (['{"label": "awe"}'], "line 1 lacks an image path"),
        (['{"image": "a.png", "label": "awe", "split": "train"}', '{"image": "a.png", "label": "awe"}'],
         "line 2 has no split"),
        (["[1, 2]"], "not a JSON object"),
    ],
)
def test_bad_manifests_name_the_line(tmp_path, lines, message):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines))
    with pytest.raises(UserError, match=message):
        load_dataset(manifest)


def test_missing_manifest_images_are_unreadable(tmp_path):
    write_image(tmp_path / "here.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"image": "here.png", "label": "awe", "split": "train"}\n'
        '{"image": "gone.png", "label": "awe", "split": "test"}\n'
    )
    for verify in (True, False):
        dataset = load_dataset(manifest, verify=verify)
        assert dataset.unreadable == [tmp_path / "gone.png"]
        assert any("gone.png does not exist" in problem for problem in dataset.problems)
        assert dataset.splits["test"] == []


def test_unknown_class_names_are_listed_with_the_accepted_ones(tmp_path):
    root = make_tree(tmp_path, {"train/sad": 1, "train/meh": 1, "train/blah": 1, "test/sad": 1})
    with pytest.raises(UserError) as caught:
        load_dataset(root)
    message = str(caught.value)
    assert "'blah', 'meh'" in message and "amusement, awe" in message and "sad'" not in message

    with pytest.raises(UserError, match="'sad'.*accepted names: positive, negative"):
        load_dataset(root, taxonomy="sentiment2")

    skipped = load_dataset(root, skip_unknown_classes=True)
    assert skipped.unknown_classes == ["blah", "meh"]
    assert {s.label for s in skipped.split("train")} == {"sadness"}
    assert any("'blah', 'meh'" in problem for problem in skipped.problems)


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def test_unreadable_images_are_skipped_named_or_fatal_when_strict(tmp_path):
    root = make_tree(tmp_path, {"train/awe": 3, "test/awe": 2})
    (root / "train/awe/zero.jpg").write_bytes(b"")
    (root / "train/awe/note.jpg").write_text("just some text")
    truncated = _truncated_jpeg(root / "train/awe/cut.jpg")
    (root / "train/awe/readme.txt").write_text("not an image")

    dataset = load_dataset(root, val_fraction=0)

    assert dataset.unreadable == [root / "train/awe/note.jpg", root / "train/awe/zero.jpg"]
    assert len(dataset.split("train")) == 4  # the truncated JPEG passes the header check
    assert "skipped 2 unreadable image(s)." in dataset.problems
    assert any("zero.jpg is empty" in p for p in dataset.problems)
    assert any("note.jpg is not an image" in p and "holds text" in p for p in dataset.problems)
    assert any("not images (e.g. train/awe/readme.txt)" in p for p in dataset.problems)

    decoded = load_dataset(root, val_fraction=0, decode=True)
    assert truncated in decoded.unreadable and len(decoded.split("train")) == 3

    unchecked = load_dataset(root, val_fraction=0, verify=False)
    assert unchecked.unreadable == [] and len(unchecked.split("train")) == 6

    with pytest.raises(UserError, match=r"2 image\(s\) in .* are unreadable \(first: .*note\.jpg\)"):
        load_dataset(root, strict=True)


def test_many_unreadable_images_name_only_the_first_few(tmp_path):
    root = make_tree(tmp_path, {"train/awe": 2, "test/awe": 1})
    for i in range(8):
        (root / f"train/awe/bad{i}.png").write_bytes(b"")
    problems = load_dataset(root).problems
    assert problems[0] == "skipped 8 unreadable image(s); the first 5 follow."
    assert len([p for p in problems if "bad" in p]) == 5


def test_missing_test_split_is_a_problem_raised_on_use(tmp_path):
    root = make_tree(tmp_path, {"train/awe": 4, "val/awe": 1})

    dataset = load_dataset(root)

    assert any("the test split is empty" in p for p in dataset.problems)
    assert len(dataset.split("validation")) == 1
    with pytest.raises(UserError, match=r"test split is empty.*add them"):
        dataset.split("test")
    with pytest.raises(UserError, match="unknown split 'holdout'"):
        dataset.split("holdout")


def test_stray_folders_and_loose_images_are_reported(tmp_path):
    root = make_tree(tmp_path, {"train/awe": 2, "test/awe": 1, "extras/awe": 1})
    write_image(root / "train" / "loose.png")
    problems = load_dataset(root).problems
    assert any("ignored folder(s) extras" in p for p in problems)
    assert any("ignored 1 image(s) lying directly in train" in p for p in problems)


def test_a_folder_of_datasets_points_at_one_of_them(tmp_path):
    make_tree(tmp_path, {"fi/train/awe": 1, "fi/test/awe": 1})
    with pytest.raises(UserError, match=r"holds dataset folders \(fi\).*pass one of them"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nowhere", "does not exist"),
        (lambda tmp: _touch(tmp / "notes.txt"), "not a .jsonl or .csv manifest"),
    ],
)
def test_bad_sources_raise_user_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_dataset(make(tmp_path))


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def test_presets_cover_the_paper_datasets():
    taxonomies = {name: preset.taxonomy for name, preset in DATASET_PRESETS.items()}
    assert taxonomies == {
        "fi": "mikels8", "emoset": "mikels8", "emotion6": "emotion6", "artphoto": "mikels8",
        "abstract": "mikels8", "flickr": "sentiment2", "instagram": "sentiment2",
        "twitter1": "sentiment2", "twitter2": "sentiment2",
    }
    assert get_dataset_preset(" FI ").has_val_split
    with pytest.raises(UserError, match="unknown dataset preset 'imagenet'; choose one of: fi, emoset"):
        get_dataset_preset("imagenet")


def test_preset_fixes_the_taxonomy_and_notes_a_missing_val_split(tmp_path):
    root = make_tree(tmp_path, {"train/anger": 3, "test/anger": 1})
    assert load_dataset(root).taxonomy.name == "mikels8"  # guessed: mikels8 comes first
    dataset = load_dataset(root, preset="emotion6")
    assert dataset.taxonomy.name == "emotion6"
    assert not any("ships a val split" in p for p in dataset.problems)
    assert any("preset fi ships a val split" in p for p in load_dataset(root, preset="fi").problems)
    with pytest.raises(UserError, match="preset fi uses taxonomy mikels8 but taxonomy sentiment2"):
        load_dataset(root, preset="fi", taxonomy="sentiment2")


def test_fractions_are_validated(tmp_path):
    root = make_tree(tmp_path, {"awe": 2})
    with pytest.raises(UserError, match="val_fraction must be at least 0 and below 1"):
        load_dataset(root, val_fraction=1.5)
