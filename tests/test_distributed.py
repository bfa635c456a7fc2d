"""Two CPU processes (torchrun, gloo) give the same caches, metrics and predictions as one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fast_runs import assert_metrics_recount, fast_config
from safetensors.torch import load_file


def torchrun(*argv, cwd: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--standalone", "-m", "emovlm_kd", *map(str, argv)]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    # On failure, show where each rank failed: the first rank's error is the cause, the
    # other's is usually only a broken connection.
    failures = [line for line in result.stderr.splitlines() if "Error" in line or "error" in line]
    assert result.returncode == 0, "\n".join(failures[:40]) + "\n...\n" + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def cache_rows(cache_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{kind/fingerprint: {image hash: row}}, checking that no row is stored twice."""
    caches = {}
    for folder in sorted(p for p in cache_dir.glob("*/*") if p.is_dir()):
        rows: dict[str, torch.Tensor] = {}
        for shard in folder.glob("shard-*.safetensors"):
            part = load_file(str(shard))
            assert not set(part) & set(rows), "a row was computed by two processes"
            rows.update(part)
        caches[f"{folder.parent.name}/{folder.name}"] = rows
    return caches


def test_caching_stages_under_two_processes_match_one(trained, tmp_path):
    """Distill and gate rerun under torchrun with an empty cache: same rows, same metrics."""
    run_dir, config, metrics = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    fresh = tmp_path / "cache"
    config_file = copy / "config.yaml"
    config_file.write_text(config_file.read_text().replace(str(config.cache_dir), str(fresh)))
    torchrun("train", "--config", config_file, "--out", copy, "--stage", "distill", "--force", cwd=tmp_path)

    single, sharded = cache_rows(Path(config.cache_dir)), cache_rows(fresh)
    assert sharded.keys() <= single.keys() and {k.split("/")[0] for k in sharded} == {"visual", "teacher", "vlm_scores"}
    # distill and gate need every split's features, and the gate VLM scores of val (its split)
    # and test; teacher logits of train (distill) and test (evaluation), and visual features and
    # teacher logits of one augmented view of each training image (distill.views=1): each
    # exactly once, no gap, no extra row.
    expected = {"visual": 66 + 36, "vlm_scores": 66 - 36, "teacher": 36 + 18 + 36}
    for key, rows in sharded.items():
        assert len(rows) == expected[key.split("/")[0]], key
        assert rows.keys() <= single[key].keys()
        for image, row in rows.items():
            assert torch.allclose(row, single[key][image], atol=1e-4), key
    again = json.loads((copy / "metrics.json").read_text())
    for model in ("teacher", "vlm", "head", "emovlm_kd"):
        assert again[model]["accuracy"] == pytest.approx(metrics[model]["accuracy"], abs=1e-6)


def test_every_stage_runs_under_two_processes(small_manifest, trained, tmp_path):
    config = fast_config(small_manifest, tmp_path / "cache", "teacher.batch_size=2", "instruct.batch_size=2")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    result = torchrun("train", "--config", config_file, "--out", tmp_path / "run", cwd=tmp_path)
    assert result.stdout.count("EmoVLM-KD (gated)") == 1  # the table comes from rank 0 only
    for stage in ("teacher", "instruct", "distill", "gate"):
        assert (tmp_path / "run" / stage / "metrics.json").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["images"] == 18
    assert_metrics_recount(metrics)
    # The vision tower is frozen, so the visual features equal those of the one-process run.
    visual = {k: v for k, v in cache_rows(tmp_path / "cache").items() if k.startswith("visual/")}
    reference = cache_rows(Path(trained[1].cache_dir))
    for key, rows in visual.items():
        assert len(rows) == 66 + 36  # every image, and one view of each training image
        assert all(torch.allclose(row, reference[key][image], atol=1e-4) for image, row in rows.items())


def test_sharded_predict_writes_every_image_once_in_order(trained, sample_root, tmp_path, capsys):
    from emovlm_kd.apps.cli import main

    run_dir = trained[0]
    images = sorted((sample_root / "test" / "surprise").iterdir())[:7]  # an odd count
    torchrun("predict", "--run-dir", run_dir, "--format", "json", "--out", tmp_path / "sharded.jsonl",
             "--batch-size", "2", *images, cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "sharded.jsonl").read_text().splitlines()]
    assert [row["image"] for row in rows] == [str(p) for p in images]
    assert not list(tmp_path.glob(".sharded.jsonl.part*"))
    assert main(["predict", "--run", str(run_dir), "--format", "json", "--out", str(tmp_path / "one.jsonl"),
                 "--batch-size", "2", *map(str, images)]) == 0
    single = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    for a, b in zip(rows, single):
        assert a["label"] == b["label"]
        assert all(abs(a["probs"][k] - b["probs"][k]) < 1e-4 for k in a["probs"])


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).parents[1] / "configs" / "accelerate"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert names == ["deepspeed_zero2", "deepspeed_zero3", "fsdp", "multi_gpu_ddp", "single_gpu"]
    for name in names:
        config = load_config_from_file(str(folder / f"{name}.yaml"))
        assert config.mixed_precision == "bf16"
