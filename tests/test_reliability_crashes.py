"""kill -9 in every stage, then rerun: training resumes, no artifact is half-written, and no
cached row is lost or stored twice. Damaged cache shards and run folders are found and redone.

EMOVLM_KD_RELIABILITY_SEED picks other kill points (default 9).
"""

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fast_runs import fast_config, subset_manifest, train_and_evaluate
from reliability import tally
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from emovlm_kd.cache import CHECKSUM, TensorCache, content_sha256
from emovlm_kd.errors import UserError
from emovlm_kd.images import file_sha256
from emovlm_kd.io import atomic_dir, remove_stale_temporaries
from emovlm_kd.run_folder import RunFolder
from emovlm_kd.stages.registry import Stage

pytestmark = pytest.mark.reliability

SEED = int(os.environ.get("EMOVLM_KD_RELIABILITY_SEED", "9"))
TEMPORARY = re.compile(r"^\..+\.(tmp|old)\d+$")
STAGES = ("teacher", "instruct", "distill", "gate")
HARNESS = Path(__file__).with_name("crash_harness.py")


@pytest.fixture(scope="module")
def tiny_manifest(sample_root) -> Path:
    """Two train, one val and one test image per class: 24 images."""
    return subset_manifest(sample_root, "tiny.jsonl", {"train": 2, "val": 1, "test": 1})


class Harness:
    """tests/crash_harness.py in a subprocess: forks one child per command."""

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen(
            [sys.executable, str(HARNESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, argv: list, log: Path, kill: dict | None = None) -> dict:
        self.process.stdin.write(json.dumps({"argv": [str(a) for a in argv], "log": str(log), "kill": kill}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the crash harness died"
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(30)


def is_temporary(path: Path, root: Path) -> bool:
    return any(TEMPORARY.match(part) for part in path.relative_to(root).parts)


def check_no_half_written_artifact(run_dir: Path, cache_dir: Path) -> int:
    """Every artifact reads whole; a stage whose metrics.json exists has whole weights. Returns
    how many files were checked."""
    checked = 0
    for root in (run_dir, cache_dir):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not is_temporary(p, root)):
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                    metadata = handle.metadata() or {}
                if root == cache_dir:
                    assert metadata.get(CHECKSUM) == content_sha256(tensors), path
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text())
            checked += 1
    if (run_dir / "config.yaml").exists():
        run = RunFolder.open(run_dir)
        for stage in STAGES:
            if (run_dir / stage / "metrics.json").exists():
                assert run.is_done(stage), run.stage_problem(stage)
    return checked


def cache_records(cache_dir: Path) -> tuple[dict[str, set], int]:
    """({kind/fingerprint: images with rows}, how many rows are stored in more than one shard).

    A row's key is its image's hash, with `@view{v}` for a distillation view of it."""
    folders, duplicated = {}, 0
    for folder in sorted(p for p in cache_dir.glob("*/*") if p.is_dir()):
        keys: set = set()
        for shard in folder.glob("shard-*.safetensors"):
            part = set(load_file(str(shard)))
            duplicated += len(part & keys)
            keys |= part
        folders[f"{folder.parent.name}/{folder.name}"] = {key.split("@")[0] for key in keys}
    return folders, duplicated


def markers(log: Path, start: int) -> list[str]:
    return [line[3:] for line in log.read_text(errors="replace").splitlines()[start:] if line.startswith("@@ ")]


# Events each stage has on the 24-image manifest (one epoch, batch 8, shards of 4 rows):
# images decoded, and files renamed into place. The kill point is drawn among them.
EVENTS = {
    ("teacher", "image"): 24,  # 12 training images, then val and test logits
    ("teacher", "write"): 7,  # the stage folder (2 renames), 4 cache shards, metrics.json
    ("instruct", "image"): 12,
    ("instruct", "write"): 3,
    ("distill", "image"): 36,  # visual features of 24 images, teacher logits of 12
    ("gate", "image"): 12,  # VLM label scores of the 12 val and test images (the gate learns on val)
}


def test_kill_9_in_every_stage_resumes_without_loss(tiny_manifest, tmp_path):
    rng = random.Random(SEED)
    # Teacher and instruct die while training or while saving; distill while caching
    # visual features and teacher logits; gate while caching VLM label scores.
    plan = [
        ("teacher", rng.choice(["image", "write"])),
        ("instruct", rng.choice(["image", "write"])),
        ("distill", "image"),
        ("gate", "image"),
    ]
    cache_dir, run_dir = tmp_path / "cache", tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(fast_config(tiny_manifest, cache_dir).to_yaml())
    argv = ["train", "--config", config, "--out", run_dir]
    log = tmp_path / "children.log"
    log.touch()
    harness = Harness()
    landed, reused = [], 0
    try:
        for stage, event in plan:
            at = rng.randint(1, EVENTS[stage, event])
            done = [s for s in STAGES if run_dir.exists() and RunFolder.open(run_dir).is_done(s)]
            start = len(log.read_text(errors="replace").splitlines())
            result = harness.run(argv, log, kill={"stage": stage, "event": event, "at": at})
            seen = markers(log, start)
            assert result["signal"] == signal.SIGKILL, (result, seen, log.read_text()[-3000:])
            landed.append(next(m for m in reversed(seen) if m.startswith("kill")))
            reused += sum(int(m.split()[4]) for m in seen if m.startswith("fill"))
            # The run resumed: finished stages were skipped, the unfinished ones ran in order.
            started = [m.split()[1] for m in seen if m.startswith("stage")]
            assert started == [s for s in STAGES[: STAGES.index(stage) + 1] if s not in done], seen
            output = "\n".join(log.read_text(errors="replace").splitlines()[start:])
            assert all(f"{s}: done already" in output for s in done)
            tally["artifacts_checked"] += check_no_half_written_artifact(run_dir, cache_dir)
            tally["kills"] += 1
            tally["faults"] += 1
        start = len(log.read_text(errors="replace").splitlines())
        result = harness.run(argv, log)
        final = markers(log, start)
    finally:
        harness.close()
    assert result == {"exit": 0, "signal": None}, log.read_text()[-3000:]
    tally["resumptions"] += len(plan)
    reused += sum(int(m.split()[4]) for m in final if m.startswith("fill"))
    tally["rows_reused"] += reused
    print(f"\nkill -9 points (seed {SEED}): " + "; ".join(landed))

    check_no_half_written_artifact(run_dir, cache_dir)
    assert remove_stale_temporaries(run_dir) == 0  # the last run swept what the kills left
    run = RunFolder.open(run_dir)
    assert all(run.is_done(stage) for stage in STAGES)
    # Every cache the finished run read holds each of its images exactly once.
    images = {file_sha256(sample.path) for samples in run.dataset.splits.values() for sample in samples}
    folders, duplicated = cache_records(cache_dir)
    used = {m.split()[1] for m in final if m.startswith("fill")}
    # Visual features of every split feed the gate, VLM scores of val (its split) and test; teacher
    # logits of val and test (teacher stage), train (distill) and test (evaluation) all come from
    # the final teacher.
    scored = {file_sha256(sample.path) for split in ("val", "test") for sample in run.dataset.splits[split]}
    expected = {folder: scored if folder.startswith("vlm_scores/") else images for folder in used}
    lost = sum(len(expected[folder] - folders[folder]) for folder in used)
    assert all(folders[folder] <= expected[folder] for folder in used)
    tally["lost"] += lost
    tally["duplicated"] += duplicated
    assert lost == 0 and duplicated == 0
    assert json.loads((run_dir / "metrics.json").read_text())["images"] == 6


# ---- cache shards: checked by checksum before reuse --------------------------------------


def counting_compute(calls: list):
    def compute(items):
        calls.extend(items)
        return torch.stack([torch.full((3,), float(item)) for item in items])

    return compute


DAMAGE = {
    "flipped byte": lambda data: data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:],
    "truncated": lambda data: data[: len(data) * 2 // 3],
    "empty": lambda data: b"",
    "garbage header": lambda data: b"\xff" * 16 + data[16:],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_shard_is_discarded_and_its_rows_recomputed(tmp_path, caplog, damage):
    keys = [f"image{i}" for i in range(8)]
    calls: list = []
    first = TensorCache(tmp_path, "kind", "fp").fill(keys, list(range(8)), counting_compute(calls), 2, "t", flush_every=4)
    shards = sorted((tmp_path / "kind" / "fp").glob("shard-*.safetensors"))
    assert len(shards) == 2
    victim = shards[0]
    lost_keys = set(load_file(str(victim)))
    victim.write_bytes(DAMAGE[damage](victim.read_bytes()))
    tally["corruptions"] += 1
    tally["faults"] += 1
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="emovlm_kd"):
        again = TensorCache(tmp_path, "kind", "fp").fill(keys, list(range(8)), counting_compute(calls), 2, "t")
    assert torch.equal(first, again)
    assert {keys[i] for i in calls} == lost_keys  # only the damaged shard's rows
    assert any("discarding damaged shard" in record.message and victim.name in record.message for record in caplog.records)
    assert len(cache_records(tmp_path)[0]["kind/fp"]) == 8 and cache_records(tmp_path)[1] == 0


def test_a_shard_without_checksum_is_not_trusted(tmp_path, caplog):
    folder = tmp_path / "kind" / "fp"
    folder.mkdir(parents=True)
    save_file({"a": torch.zeros(3)}, str(folder / "shard-old.safetensors"))
    with caplog.at_level(logging.WARNING, logger="emovlm_kd"):
        rows = TensorCache(tmp_path, "kind", "fp").rows()
    assert rows == {} and not (folder / "shard-old.safetensors").exists()
    assert "older version" in caplog.text


def test_stale_temporaries_are_swept_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "stage").mkdir()
    stale_file = tmp_path / "stage" / f".model.safetensors.tmp{dead.pid}"
    stale_dir = tmp_path / f".teacher.tmp{dead.pid}"
    live = tmp_path / f".metrics.json.tmp{os.getpid()}"
    for path in (stale_file, live):
        path.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_text("half")
    assert remove_stale_temporaries(tmp_path) == 2
    assert live.exists() and not stale_file.exists() and not stale_dir.exists()
    assert remove_stale_temporaries(tmp_path, min_age_s=3600) == 0


def test_atomic_dir_keeps_the_old_folder_when_saving_fails(tmp_path):
    target = tmp_path / "gate"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as saving:
        (saving / "model.safetensors").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["gate"]
    assert (target / "model.safetensors").read_text() == "old"
    with atomic_dir(target) as saving:
        (saving / "config.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["config.json"]  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["gate"]


# ---- a finished stage must be whole; otherwise it is redone --------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGED_STAGES = {
    "truncated gate weights": ("gate", lambda run: truncate(run / "gate" / "model.safetensors"), "damaged or incomplete"),
    "damaged gate metrics": ("gate", lambda run: (run / "gate" / "metrics.json").write_text("{"), "damaged metrics.json"),
    "missing distill weights": ("distill", lambda run: (run / "distill" / "model.safetensors").unlink(), "damaged or incomplete"),
    "instruct weights as a pickle": (
        "instruct",
        lambda run: (run / "instruct" / "model" / "model.safetensors").rename(run / "instruct" / "model" / "pytorch_model.bin"),
        "damaged or incomplete",
    ),
    "teacher asks for custom code": (
        "teacher",
        lambda run: (run / "teacher" / "config.json").write_text(
            json.dumps(json.loads((run / "teacher" / "config.json").read_text()) | {"auto_map": {"AutoConfig": "evil.Config"}})
        ),
        "custom code",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_STAGES))
def test_a_damaged_stage_is_not_done_and_says_why(trained, tmp_path, case):
    stage, damage, words = DAMAGED_STAGES[case]
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    damage(copy)
    tally["corruptions"] += 1
    tally["faults"] += 1
    run = RunFolder.open(copy)
    assert not run.is_done(stage) and words in run.stage_problem(stage)
    with pytest.raises(UserError, match=f"the {stage} stage of .* {words}.*; run `emovlm-kd train"):
        run.require(stage)
    for other in set(STAGES) - {stage}:
        assert run.is_done(other)


def test_truncated_weights_are_retrained_on_the_next_run(trained, tmp_path, monkeypatch):
    run_dir, config, metrics = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    truncate(copy / "gate" / "model.safetensors")
    ran = []
    real = Stage.train_function
    monkeypatch.setattr(Stage, "train_function", lambda stage: ran.append(stage.name) or real(stage))
    _, again = train_and_evaluate(config, copy)
    assert ran == ["gate"] and again == metrics
    tally["resumptions"] += 1
