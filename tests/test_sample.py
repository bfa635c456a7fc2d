import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from emovlm_kd.data import SPLITS
from emovlm_kd.data.sample import (
    EMOJI_EMOTIONS,
    SOURCES,
    VAL_CODEPOINTS,
    build_sample_dataset,
    plan_images,
)
from emovlm_kd.errors import UserError
from emovlm_kd.labels import EMOTION6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "emoji6"
    summary = build_sample_dataset(out, seed=0)
    records = [json.loads(line) for line in (out / "manifest.jsonl").open()]
    return out, summary, records



def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_table_covers_every_class_with_two_val_faces():
    assert set(EMOJI_EMOTIONS.values()) == set(EMOTION6.labels)
    val_labels = Counter(EMOJI_EMOTIONS[cp] for cp in VAL_CODEPOINTS)
    assert set(val_labels) == set(EMOTION6.labels)
    for label in EMOTION6.labels:
        faces = sum(v == label for v in EMOJI_EMOTIONS.values())
        assert faces >= 2 and val_labels[label] == 2
    # More faces than the two-style first recipe had (22), joy and sadness the most.
    assert len(EMOJI_EMOTIONS) >= 30


def test_counts_on_disk_match_manifest_and_summary(built):
    out, summary, records = built
    manifest_counts = Counter((r["split"], r["label"]) for r in records)
    disk_counts = Counter(
        (p.parent.parent.name, p.parent.name) for p in out.glob("*/*/*.png")
    )
    assert disk_counts == manifest_counts
    assert summary["images"] == len(records) == sum(disk_counts.values())
    assert summary["images"] == 432
    for split in SPLITS:
        for label in EMOTION6.labels:
            assert manifest_counts[split, label] > 0
            assert summary["per_split"][split][label] == manifest_counts[split, label]
    assert sum(s["images"] for s in summary["sources"].values()) == len(records)


def test_every_image_is_a_224_rgb_png(built):
    out, _, records = built
    for record in records:
        with Image.open(out / record["image"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (224, 224))
        split, label, name = record["image"].split("/")
        assert (split, label) == (record["split"], record["label"])
        assert name.startswith(f"{record['source']}_{record['codepoint'][2:]}_")


def test_test_split_is_the_holdout_source_only(built):
    _, _, records = built
    for record in records:
        assert (record["source"] == "twemoji") == (record["split"] == "test")
    # Train and val draw on the two other artwork sets, each for every class.
    sources = Counter((r["source"], r["label"]) for r in records if r["split"] == "train")
    assert {source for source, _ in sources} == {"openmoji", "noto"}
    assert all(sources["openmoji", label] for label in EMOTION6.labels)


def test_annotations_describe_each_picture_and_pass_the_checks(built):
    from emovlm_kd.data.annotations import read_annotations
    from emovlm_kd.data.sample import FACE_FEATURES

    out, _, records = built
    annotations = read_annotations(out / "annotations.jsonl", EMOTION6, [out])
    by_image = {a.image: a for a in annotations}
    annotated = [r for r in records if r["split"] != "test"]
    assert len(annotations) == len(annotated)  # every train and val image, no test image
    assert not [a for a in annotations if a.flags]  # no label named, no section missing
    for record in annotated:
        annotation = by_image[(out / record["image"]).resolve()]
        features, conveys = FACE_FEATURES[int(record["codepoint"][2:], 16)]
        assert features in annotation.key_elements and conveys[1:] in annotation.reasoning
    # Built from the picture, not the label: one label's faces get different key elements.
    joy = {a.key_elements.split(", on ")[0] for a in annotations if a.label == "joy"}
    assert len(joy) >= 6


def test_no_drawing_straddles_train_and_val(built):
    _, _, records = built
    train = {(r["source"], r["codepoint"]) for r in records if r["split"] == "train"}
    val = {(r["source"], r["codepoint"]) for r in records if r["split"] == "val"}
    assert train and val and not train & val
    # Val draws known faces anew, as the test does: each val face trains in the other set.
    assert {r["source"] for r in records if r["split"] == "val"} == {"noto"}
    assert all(("openmoji", codepoint) in train for _, codepoint in val)


def test_every_image_records_its_licence_and_origin(built):
    out, _, records = built
    for record in records:
        assert record["license"] == SOURCES[record["source"]].license
        cp = int(record["codepoint"][2:], 16)
        assert EMOJI_EMOTIONS[cp] == record["label"]
        assert record["unicode_name"]
        assert {"scale", "rotation_deg", "offset_px", "background"} <= set(record["augmentation"])
    attribution = (out / "ATTRIBUTION.md").read_text()
    assert all(s.license in attribution for s in SOURCES.values())


def test_incomplete_folder_is_rebuilt_to_identical_bytes(built, tmp_path):
    out, _, _ = built
    copy = tmp_path / "emoji6"
    shutil.copytree(out, copy)
    next(copy.glob("val/*/*.png")).unlink()
    # A missing image makes the folder incomplete, so this is a full build from scratch.
    assert not build_sample_dataset(copy, seed=0)["reused"]
    assert _digests(copy) == _digests(out)
    assert [p.name for p in tmp_path.iterdir()] == ["emoji6"]  # no staging folder left


def test_complete_folder_is_reused(built):
    out, _, _ = built
    before = _digests(out)
    assert build_sample_dataset(out, seed=0)["reused"]
    assert _digests(out) == before


def test_different_seed_differs(built, tmp_path):
    out, _, records = built
    other = tmp_path / "seed1"
    build_sample_dataset(other, seed=1)
    original, changed = _digests(out), _digests(other)
    assert original.keys() == changed.keys()
    differing = [name for name in original if original[name] != changed[name]]
    assert len(differing) > len(records) // 2


def test_holdout_source_is_a_parameter(tmp_path):
    for holdout in SOURCES:
        for split, _, source, _, _ in plan_images(holdout):
            assert (source == holdout) == (split == "test")
    with pytest.raises(UserError, match="holdout source"):
        build_sample_dataset(tmp_path / "bad", holdout_source="noto-serif")


def test_missing_noto_font_says_what_to_install(tmp_path, monkeypatch):
    import emovlm_kd.data.sample as sample

    monkeypatch.setattr(sample, "NOTO_FONT", tmp_path / "absent.ttf")
    with pytest.raises(UserError, match="apt-get install fonts-noto-color-emoji"):
        build_sample_dataset(tmp_path / "nofont")
    assert not (tmp_path / "nofont").exists()


def test_missing_cairosvg_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cairosvg", None)  # makes `import cairosvg` fail
    with pytest.raises(UserError, match=r"pip install 'emovlm-kd\[offline\]'"):
        build_sample_dataset(tmp_path / "nocairo")
    assert not any(tmp_path.iterdir())


def test_a_folder_with_other_files_is_not_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not part of a sample dataset"):
        build_sample_dataset(out)
    assert (out / "notes.txt").read_text() == "keep me"
