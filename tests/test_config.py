import pytest

from emovlm_kd.config import RunConfig, load_config
from emovlm_kd.errors import UserError


def test_defaults_are_the_papers_settings():
    config = RunConfig()
    assert config.preset == "paper"
    assert (config.teacher.lr, config.teacher.weight_decay, config.teacher.batch_size, config.teacher.epochs) == (
        3e-5, 1e-5, 10, 10)
    instruct = config.instruct
    assert (instruct.lora_r, instruct.lora_alpha, instruct.lora_dropout) == (8, 8, 0.05)
    assert (instruct.lr, instruct.epochs, instruct.max_grad_norm, instruct.warmup_ratio) == (1e-4, 5, 0.3, 0.03)
    distill = config.distill
    assert (distill.depth, distill.alpha, distill.temperature, distill.lr, distill.epochs) == (1, 0.5, 2.0, 1e-5, 5)
    assert (config.gate.variant, config.gate.lr, config.gate.epochs) == ("concat_linear", 1e-4, 10)
    # Held out by default: the gate learns how far to trust each expert on images they never saw.
    assert config.gate.split == "val"
    # No distillation views in the paper; no annotation file is assumed (train asks for one).
    assert config.distill.views == 0 and config.instruct.annotations is None


def test_every_stage_has_its_config_section_in_the_order_it_runs():
    import dataclasses
    import typing

    from emovlm_kd.config import DistillStageConfig, GateStageConfig
    from emovlm_kd.stages.registry import STAGES

    types = typing.get_type_hints(RunConfig)
    sections = [field.name for field in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(types[field.name])]
    assert sections == ["data", *(stage.name for stage in STAGES)]
    config = RunConfig()
    assert all(type(getattr(config, stage.name)) is stage.config_class for stage in STAGES)
    assert (STAGES[2].config_class, STAGES[3].config_class) == (DistillStageConfig, GateStageConfig)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\ndistill:\n  depth: 3\n")
    config = load_config(path, ["distill.alpha=0.7", "teacher.lr=1e-4", "data.taxonomy=emotion6"])
    assert (config.preset, config.distill.depth, config.distill.alpha) == ("tiny", 3, 0.7)
    assert config.teacher.lr == pytest.approx(1e-4)
    assert config.data.taxonomy == "emotion6"
    assert load_config(None, [f"{k}={v}" for k, v in [("seed", 3)]]).seed == 3
    # Round trip through the YAML saved beside a run.
    saved = tmp_path / "saved.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


@pytest.mark.parametrize(
    "override, named",
    [
        ("distill.dept=2", "distill.dept"),
        ("distill.depth=two", "distill.depth"),
        ("seed=true", "seed"),
        ("data=3", "data"),
        ("nonsense=1", "nonsense"),
    ],
)
def test_bad_keys_and_types_are_named(override, named):
    with pytest.raises(UserError) as error:
        load_config(None, [override])
    assert named in str(error.value)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("preset: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(broken)


def test_the_demo_config_loads():
    from importlib import resources

    with resources.as_file(resources.files("emovlm_kd") / "configs" / "demo.yaml") as demo:
        config = load_config(demo)
    assert config.preset == "demo" and config.gate.split == "val" and config.distill.views > 0
    assert config.instruct.annotations.endswith("annotations.jsonl")


def test_every_shipped_config_trains_the_gate_on_held_out_data():
    from importlib import resources
    from pathlib import Path

    paper = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))
    assert len(paper) == 7
    with resources.as_file(resources.files("emovlm_kd") / "configs" / "demo.yaml") as demo:
        for path in [*paper, demo]:
            assert load_config(path).gate.split == "val", path


def test_paper_configs_point_at_their_annotations():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml")):
        config = load_config(path)
        assert config.instruct.annotations == f"{config.data.root}/annotations.jsonl", path


def test_train_refuses_a_silent_classification_only_run(small_manifest, tmp_path, capsys):
    from emovlm_kd.apps.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"preset: tiny\ndata:\n  root: {small_manifest}\ncache_dir: {tmp_path / 'cache'}\n")
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "instruct.annotations is not set" in err and "instruct.annotations=none" in err
    # Refused before any stage ran: nothing was trained.
    assert not (tmp_path / "run" / "teacher" / "metrics.json").exists()


def test_gate_on_train_warns_that_its_inputs_are_in_sample(trained, tmp_path, caplog):
    import dataclasses
    import logging

    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages import gate

    run_dir, config, _ = trained
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run_dir, copy)
    run = RunFolder(dataclasses.replace(config, gate=dataclasses.replace(config.gate, split="train")), copy)
    with caplog.at_level(logging.WARNING, logger="emovlm_kd"):
        metrics = gate.train(run)
    assert metrics["trained_on"] == "train"
    assert any("in-sample" in record.message for record in caplog.records)


def test_a_gate_fitted_on_val_never_scores_the_train_split_with_the_vlm(trained, tmp_path, monkeypatch):
    # At paper scale the train split is the largest: a VLM pass over it only for a metric is waste.
    import dataclasses
    import shutil

    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages import gate

    run_dir, config, _ = trained
    shutil.copytree(run_dir, tmp_path / "run")
    run = RunFolder(dataclasses.replace(config, gate=dataclasses.replace(config.gate, split="val")), tmp_path / "run")
    scored = []
    real = gate.vlm_scores
    monkeypatch.setattr(gate, "vlm_scores", lambda run, vlm, samples: scored.append(samples[0].split) or real(run, vlm, samples))
    metrics = gate.train(run)
    assert metrics["trained_on"] == "val"
    assert sorted(scored) == ["test", "val"]
    assert "train_accuracy" not in metrics and {"val_accuracy", "test_accuracy"} <= set(metrics)


@pytest.mark.parametrize("section", ["instruct", "distill"])
def test_a_negative_view_count_is_refused_in_one_sentence(section):
    with pytest.raises(UserError, match=rf"^{section}\.views=-1 is a count of augmented views per image; use 0"):
        load_config(None, [f"{section}.views=-1"])
    assert getattr(load_config(None, [f"{section}.views=2"]), section).views == 2
