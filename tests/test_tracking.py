"""report_to: every stage logs its losses and accuracies to the chosen tracker."""

import json

import pytest
from fast_runs import fast_config, subset_manifest

from emovlm_kd.errors import UserError


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every TensorBoard event file under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return found


def test_every_stage_writes_tensorboard_events(sample_root, tmp_path):
    from emovlm_kd.stages.runner import train

    manifest = subset_manifest(sample_root, "tracked.jsonl", {"train": 2, "val": 1, "test": 1})
    config = fast_config(manifest, tmp_path / "cache", "report_to=tensorboard", "distill.views=0")
    run = train(config, tmp_path / "run")

    logs = tmp_path / "run" / "logs" / "tensorboard"
    assert sorted(p.name for p in logs.iterdir()) == ["distill", "gate", "instruct", "teacher"]
    for stage in ("teacher", "instruct"):  # the Trainer's own records: its training loss
        assert any(tag.startswith("train/") and "loss" in tag for tag in scalars(logs / stage)), stage
    for stage in ("distill", "gate"):  # one point per epoch, the very figures of metrics.json
        found = scalars(logs / stage)
        history = json.loads((tmp_path / "run" / stage / "metrics.json").read_text())["history"]
        for key in ("loss", "train_accuracy"):
            assert [step for step, _ in found[key]] == [row["epoch"] for row in history], (stage, key)
            assert [value for _, value in found[key]] == pytest.approx([row[key] for row in history], rel=1e-5)
        assert found["final/val_accuracy"][0][1] == pytest.approx(run.stage_metrics(stage)["val_accuracy"], rel=1e-5)


def test_an_unknown_tracker_is_one_sentence():
    from emovlm_kd.config import load_config

    with pytest.raises(UserError, match="report_to='tensorbord' is not a tracker; use one of: none, tensorboard"):
        load_config(None, ["report_to=tensorbord"])
