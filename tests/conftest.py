"""Tests run offline, on the offline presets, with caches in a throwaway folder."""

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache per test session: the rebuilt Qwen2 tokenizer is made once, never in ~/.cache.
os.environ.setdefault("EMOVLM_KD_CACHE", tempfile.mkdtemp(prefix="emovlm-kd-tests-"))


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The offline emoji sample dataset (360 images), built once per session."""
    from emovlm_kd.data.sample import build_sample_dataset

    root = tmp_path_factory.mktemp("sample") / "sample"
    build_sample_dataset(root)
    return root


@pytest.fixture(scope="session")
def small_manifest(sample_root) -> Path:
    """A JSONL manifest over a few sample images per class and split, for fast stage tests."""
    per_split = {"train": 6, "val": 2, "test": 3}
    taken: dict[tuple[str, str], int] = {}
    lines = []
    for line in (sample_root / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = (record["split"], record["label"])
        if taken.get(key, 0) < per_split[record["split"]]:
            taken[key] = taken.get(key, 0) + 1
            lines.append(json.dumps({k: record[k] for k in ("image", "label", "split")}))
    manifest = sample_root / "small.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="session")
def tiny_adapter():
    from emovlm_kd.models.registry import get_preset, load_vlm

    return load_vlm(get_preset("tiny"), seed=0)
