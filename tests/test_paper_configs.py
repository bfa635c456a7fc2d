"""The shipped configs/paper/*.yaml carry the paper's settings for their dataset."""

from pathlib import Path

import pytest

from emovlm_kd.config import load_config
from emovlm_kd.data.datasets import DATASET_PRESETS

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "paper").glob("*.yaml"))


def test_every_paper_dataset_has_a_config():
    assert {path.stem for path in CONFIGS} >= {
        "fi",
        "emoset",
        "emotion6",
        "artphoto",
        "abstract",
        "flickr",
        "instagram",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_has_the_paper_settings(path):
    config = load_config(path)
    assert config.preset == "paper" and config.data.dataset == path.stem and path.stem in DATASET_PRESETS
    assert config.data.split_seed == 42 and config.data.val_fraction == 0.1
    instruct = config.instruct
    assert (instruct.lora_r, instruct.lora_alpha, instruct.lora_dropout) == (8, 8, 0.05)
    assert (instruct.lr, instruct.warmup_ratio, instruct.epochs, instruct.max_grad_norm) == (1e-4, 0.03, 5, 0.3)
    assert instruct.lr_scheduler == "constant_with_warmup" and instruct.method == "auto"
    teacher = config.teacher
    assert (teacher.lr, teacher.weight_decay, teacher.batch_size, teacher.epochs) == (3e-5, 1e-5, 10, 10)
    distill = config.distill
    assert (distill.depth, distill.alpha, distill.temperature) == (1, 0.5, 2.0)
    assert (distill.lr, distill.weight_decay, distill.epochs, distill.dropout) == (1e-5, 1e-4, 5, 0.1)
    gate = config.gate
    assert (gate.variant, gate.lr, gate.weight_decay, gate.epochs) == ("concat_linear", 1e-4, 1e-4, 10)
