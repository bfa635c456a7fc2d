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
        assert load_config(demo).preset == "tiny"
