"""Tests run offline, on the offline presets, with caches in a throwaway folder."""

import os
import tempfile
from pathlib import Path

import pytest
from fast_runs import fast_config, subset_manifest, train_and_evaluate

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache per test session: the rebuilt Qwen2 tokenizer is made once, never in ~/.cache.
os.environ.setdefault("EMOVLM_KD_CACHE", tempfile.mkdtemp(prefix="emovlm-kd-tests-"))


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The offline emoji sample dataset (432 images), built once per session."""
    from emovlm_kd.data.sample import build_sample_dataset

    root = tmp_path_factory.mktemp("sample") / "sample"
    build_sample_dataset(root)
    return root


@pytest.fixture(scope="session")
def small_manifest(sample_root) -> Path:
    """A JSONL manifest over a few sample images per class and split, for fast stage tests."""
    return subset_manifest(sample_root, "small.jsonl", {"train": 6, "val": 2, "test": 3})


@pytest.fixture(scope="session")
def tiny_adapter():
    from emovlm_kd.models.registry import get_preset, load_vlm

    return load_vlm(get_preset("tiny"), seed=0)


@pytest.fixture(scope="session")
def trained(small_manifest, tmp_path_factory):
    """A run trained through every stage on the small manifest: (run_dir, config, test metrics).

    Shared by the whole session; a test that changes it must leave it as it found it.
    """
    base = tmp_path_factory.mktemp("trained")
    config = fast_config(small_manifest, base / "cache")
    _, metrics = train_and_evaluate(config, base / "run")
    return base / "run", config, metrics


@pytest.fixture(scope="session")
def model(trained):
    """The `trained` run's model, loaded once per session (the serving tests share it)."""
    from emovlm_kd import EmoVLMKD

    return EmoVLMKD.from_pretrained(trained[0])


@pytest.fixture(scope="session")
def evaluated(trained, tmp_path_factory):
    """`emovlm-kd evaluate --efficiency` on the trained run, into a folder of its own: (out, stdout)."""
    import contextlib
    import io

    from emovlm_kd.apps.cli import main

    out = tmp_path_factory.mktemp("evaluated") / "test"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", "--run", str(trained[0]), "--out", str(out), "--efficiency"])
    assert code == 0
    return out, printed.getvalue()


def pytest_terminal_summary(terminalreporter):
    """The reliability tests' figures on one line, when any of them ran."""
    from reliability import summary_line, tally

    if tally:
        terminalreporter.write_line(summary_line())
