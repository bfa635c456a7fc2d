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
    """The offline emoji sample dataset (432 images), built once per session."""
    from emovlm_kd.data.sample import build_sample_dataset

    root = tmp_path_factory.mktemp("sample") / "sample"
    build_sample_dataset(root)
    return root


def subset_manifest(sample_root: Path, name: str, per_split: dict[str, int]) -> Path:
    """A JSONL manifest over the first `per_split[split]` sample images per class and split."""
    taken: dict[tuple[str, str], int] = {}
    lines = []
    for line in (sample_root / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = (record["split"], record["label"])
        if taken.get(key, 0) < per_split[record["split"]]:
            taken[key] = taken.get(key, 0) + 1
            lines.append(json.dumps({k: record[k] for k in ("image", "label", "split")}))
    manifest = sample_root / name
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="session")
def small_manifest(sample_root) -> Path:
    """A JSONL manifest over a few sample images per class and split, for fast stage tests."""
    return subset_manifest(sample_root, "small.jsonl", {"train": 6, "val": 2, "test": 3})


@pytest.fixture(scope="session")
def tiny_adapter():
    from emovlm_kd.models.registry import get_preset, load_vlm

    return load_vlm(get_preset("tiny"), seed=0)


FAST = ["preset=tiny", "instruct.annotations=none", "teacher.epochs=1", "instruct.epochs=1", "distill.epochs=3",
        "distill.views=1", "gate.epochs=3", "batch_size=8"]


def fast_config(manifest: Path, cache: Path, *overrides):
    """The demo config on `manifest` with the plumbing preset `tiny`, classification-only
    tuning and a few epochs: every stage in seconds."""
    from importlib import resources

    from emovlm_kd.config import load_config

    with resources.as_file(resources.files("emovlm_kd") / "configs" / "demo.yaml") as path:
        return load_config(path, [f"data.root={manifest}", f"cache_dir={cache}", *FAST, *overrides])


@pytest.fixture(scope="session")
def trained(small_manifest, tmp_path_factory):
    """A run trained through every stage on the small manifest: (run_dir, config, test metrics).

    Shared by the whole session; a test that changes it must leave it as it found it.
    """
    from emovlm_kd.train import train

    base = tmp_path_factory.mktemp("trained")
    config = fast_config(small_manifest, base / "cache")
    _, metrics = train(config, base / "run")
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


def assert_metrics_recount(metrics: dict) -> None:
    """Each model's accuracy and macro-F1 agree with its own confusion matrix over every
    image, and its interval holds the score: numbers a broken scorer could not fake."""
    for model in ("teacher", "vlm", "head", "emovlm_kd"):
        report = metrics[model]
        confusion = report["confusion_matrix"]
        assert sum(map(sum, confusion)) == metrics["images"]
        right = sum(confusion[k][k] for k in range(len(confusion)))
        assert report["accuracy"] == right / metrics["images"]
        low, high = report["ci95"]["accuracy"]
        assert low <= report["accuracy"] <= high
        f1 = [report["per_class"][label]["f1"] for label in metrics["labels"]]
        present = [k for k, row in enumerate(confusion) if sum(row) or sum(r[k] for r in confusion)]
        assert abs(report["macro_f1"] - sum(f1[k] for k in present) / len(present)) < 1e-9


def pytest_terminal_summary(terminalreporter):
    """The reliability tests' figures on one line, when any of them ran."""
    from reliability import summary_line, tally

    if tally:
        terminalreporter.write_line(summary_line())
