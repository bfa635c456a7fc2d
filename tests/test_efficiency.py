"""Parameter counts at the paper's scale (no weights), and the analytic FLOPs checked against
torch's own FLOP counter on small models."""

import json

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from emovlm_kd.analysis.cost import (
    Workload,
    paper_scale,
    qwen2_vl_flops,
    vit_flops,
    workload_for,
)
from emovlm_kd.labels import get_taxonomy
from emovlm_kd.models.registry import load_vlm, offline_preset_for
from emovlm_kd.models.vlm import ADAPTERS
from emovlm_kd.prompts import classification_answer, classification_prompt


@pytest.fixture(scope="module")
def fi_scale():
    return paper_scale(Workload())  # Mikels-8, depth-1 head, concat+linear gate


def row(table, key):
    return next(r for r in table["rows"] if r["key"] == key)


def test_paper_scale_parameter_counts(fi_scale):
    # Published sizes: Qwen2-VL-7B-Instruct has 8,291,375,616 parameters (675.8M in its vision tower).
    assert row(fi_scale, "vlm")["parameters"] == 8_291_375_616
    assert row(fi_scale, "vision")["parameters"] == 675_759_104
    # ViT-B/16 at 384 px with an 8-way head: 85.8M in the encoder, 577 position embeddings.
    assert row(fi_scale, "teacher")["parameters"] == 86_096_648
    # Linear(3584 -> 1024) + Linear(1024 -> 8); Linear(16 -> 8).
    assert row(fi_scale, "head")["parameters"] == 3584 * 1024 + 1024 + 1024 * 8 + 8
    assert row(fi_scale, "gate")["parameters"] == 16 * 8 + 8
    assert row(fi_scale, "emovlm_kd")["parameters"] == 8_291_375_616 + 3_679_240 + 136
    # ~0.044% of the VLM, not the 0.003% the paper quotes.
    assert fi_scale["head_share_of_vlm"] == pytest.approx(4.437e-4, rel=1e-3)


def test_paper_scale_flops_are_plausible(fi_scale):
    vlm = row(fi_scale, "vlm")["gflops"]
    # Roughly 2 x parameters x tokens through the language model, plus the vision tower.
    tokens = 256 + 74 + 4 + 8 * 4
    assert 2 * 7.07 * tokens < vlm < 2 * 7.07 * tokens + 1600
    # ViT-B/16 at 384 px: the usual "55.5 GFLOPs" counts multiply-accumulates.
    assert row(fi_scale, "teacher")["gflops"] == pytest.approx(2 * 55.5, rel=0.01)
    assert row(fi_scale, "emovlm_kd")["gflops"] < row(fi_scale, "vlm_and_teacher")["gflops"]


def test_workload_counts_the_real_prompt(tiny_adapter):
    assert workload_for(tiny_adapter, get_taxonomy("mikels8")) == Workload()


@pytest.mark.parametrize("family", list(ADAPTERS))
def test_every_family_counts_text_and_visual_tokens(family):
    """`workload_for` works for every family: the adapter says which tokens are visual."""
    adapter = load_vlm(offline_preset_for(family), seed=0)
    taxonomy = get_taxonomy("mikels8")
    image = Image.new("RGB", (56, 56), "gray")
    prompt = classification_prompt(taxonomy)
    inputs = adapter.encode([image], [prompt])
    text, visual = adapter.token_counts(inputs)
    # Visual: as many as the visual encoder hands the language model for the image (image
    # delimiters and tile tags are not among them) ...
    encoded = sum(len(tokens) for tokens in adapter.visual_tokens(inputs).per_image)
    assert visual.tolist() == [encoded]
    # ... text: the rest of the prompt as the tokenizer writes it.
    image_text = adapter.image_texts(adapter.process_images([image]))[0]
    written = len(adapter.tokenizer(adapter.prompt_text(prompt, image_text)).input_ids)
    assert text.tolist() == [written - encoded]
    workload = workload_for(adapter, taxonomy)
    assert (workload.prompt_tokens, workload.num_labels) == (text.item(), 8)
    answers, shared = adapter.scored_answer_ids([classification_answer(label) for label in taxonomy.labels])
    assert workload.scored_positions == sum(len(ids) - shared - 1 for ids in answers)
    # Padding is neither: beside a longer prompt, a shorter one keeps its own counts.
    short = classification_prompt(get_taxonomy("sentiment2"))
    short_text, short_visual = adapter.token_counts(adapter.encode([image], [short]))
    batch_text, batch_visual = adapter.token_counts(adapter.encode([image, image], [prompt, short]))
    assert batch_text.tolist() == [text.item(), short_text.item()] and short_text.item() < text.item()
    assert batch_visual.tolist() == [encoded, short_visual.item()]


@pytest.mark.parametrize("taxonomy", ["mikels8", "sentiment2"])
def test_qwen2_vl_flops_match_torch_counter(tiny_adapter, taxonomy):
    # torch's counter sees the linear and convolution layers (CPU attention kernels are not
    # counted by it), so those parts must agree exactly with a real scoring pass.
    taxonomy = get_taxonomy(taxonomy)
    inputs = tiny_adapter.encode([Image.new("RGB", (112, 112), "gray")], [classification_prompt(taxonomy)])
    answers = [classification_answer(label) for label in taxonomy.labels]
    with FlopCounterMode(display=False) as counter:
        tiny_adapter.answer_logprobs(inputs, answers)
    parts = qwen2_vl_flops(tiny_adapter.model, workload_for(tiny_adapter, taxonomy, image_size=112))
    assert parts["vision_linear"] + parts["language_linear"] + parts["lm_head"] == counter.get_total_flops()


def test_vit_flops_match_torch_counter_with_attention():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        num_labels=6,
    )
    config._attn_implementation = "eager"  # attention as matmuls, which the counter sees
    model = ViTForImageClassification(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values=torch.randn(1, 3, 64, 64))
    assert sum(vit_flops(model).values()) == counter.get_total_flops()


def test_evaluate_prints_and_saves_the_efficiency_tables(evaluated):
    out, printed = evaluated
    assert "8.29B (8,291,375,616)" in printed and "0.003%" in printed and "0.044%" in printed
    for deployment in ("VLM alone", "VLM + teacher together", "EmoVLM-KD"):
        assert deployment in printed
    saved = json.loads((out / "efficiency.json").read_text())
    # The run's own taxonomy (emotion6), head and gate set the paper-scale workload.
    assert saved["paper_scale"]["workload"]["num_labels"] == 6
    measured = saved["measured"]["deployments"]
    assert all(measured[name]["latency_ms"] > 0 and measured[name]["activations_mib"] > 0 for name in measured)
    assert (
        measured["vlm_and_teacher"]["parameters"] > measured["emovlm_kd"]["parameters"] > measured["vlm"]["parameters"]
    )
    assert "Efficiency" in (out / "report.md").read_text()
