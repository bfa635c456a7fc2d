"""Instruction data: answer-only loss, the three tasks, annotations and LoRA targets."""

import json

import pytest
import torch
from PIL import Image

from emovlm_kd.data.annotations import read_annotations
from emovlm_kd.errors import UserError
from emovlm_kd.labels import EMOTION6
from emovlm_kd.stages.instruct import apply_lora, keep_answer_logits, resolve_method


def test_loss_covers_answer_tokens_only(tiny_adapter):
    adapter = tiny_adapter
    image = Image.new("RGB", (120, 90), (10, 120, 30))
    answers = ["{'emotion': 'joy'}", "A dog runs on a sunny beach with a red ball."]
    inputs = adapter.encode([image, image], ["Which emotion?", "Describe the key elements."], answers)
    for row, answer in enumerate(answers):
        labelled = inputs["labels"][row][inputs["labels"][row] != -100]
        # Exactly the answer and its end-of-turn token; no system, prompt, image or pad token.
        assert adapter.tokenizer.decode(labelled) == answer + "<|im_end|>"
        image_positions = inputs["input_ids"][row] == adapter.model.config.image_token_id
        assert (inputs["labels"][row][image_positions] == -100).all()
        assert (inputs["labels"][row][inputs["attention_mask"][row] == 0] == -100).all()


def test_keeping_only_answer_logits_leaves_the_loss_unchanged(tiny_adapter):
    adapter = tiny_adapter
    images = [Image.new("RGB", (100, 100), (200, 0, 0)), Image.new("RGB", (140, 60), (0, 0, 200))]
    inputs = adapter.encode(images, ["Which emotion?", "Why?"], ["{'emotion': 'anger'}", "Because of the clouds."])
    with torch.no_grad():
        full = adapter.model(**inputs).loss
        trimmed = adapter.model(**keep_answer_logits(inputs))
    assert torch.allclose(full, trimmed.loss, atol=1e-5)
    # One row of vocabulary logits per target token across the batch, none for padding:
    # the second answer is the longer, and the first row's extra columns cost nothing.
    targets = int((inputs["labels"] != -100).sum())
    assert trimmed.logits.shape == (targets, adapter.model.config.get_text_config().vocab_size)


# Qwen2-VL names its language model `language_model`, SmolVLM `text_model`; both vision
# towers have attention projections of their own that LoRA must leave alone.
@pytest.mark.parametrize("preset", ["tiny", "tiny-smolvlm"])
def test_lora_targets_the_language_model_attention_only(preset):
    from peft.tuners.lora import LoraLayer

    from emovlm_kd.config import InstructStageConfig
    from emovlm_kd.models.registry import get_preset, load_vlm

    adapter = load_vlm(get_preset(preset), seed=0)
    model = apply_lora(adapter, InstructStageConfig(), quantized=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and adapter.language_model_name in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    vision = [m for module in adapter.vision_modules().values() for m in module.modules()]
    assert vision and not any(isinstance(m, LoraLayer) for m in vision)
    lora = model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 8, 0.05)


def test_method_choice():
    assert resolve_method("auto", "full") == "full"
    assert resolve_method("auto", "auto") in ("lora", "qlora")
    assert resolve_method("lora", "full") == "lora"
    with pytest.raises(UserError):
        resolve_method("dora", "auto")


def test_annotations_are_read_and_flagged(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    records = [
        {"image": "a.png", "label": "happy", "key_elements": "A smiling child.", "reasoning": "Smiles signal delight."},
        {"image": "a.png", "label": "joy", "key_elements": "A smiling child.", "reasoning": "Clearly joyful, so joy."},
        {"image": "a.png", "label": "sad", "key_elements": "", "reasoning": "Grey rain."},
    ]
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    read = read_annotations(path, EMOTION6, [tmp_path])
    assert [r.label for r in read] == ["joy", "joy", "sadness"]
    assert read[0].flags == () and read[0].image == (tmp_path / "a.png").resolve()
    assert "names the true label" in read[1].flags
    assert "missing key_elements" in read[2].flags
    path.write_text("not json\n")
    with pytest.raises(UserError, match="line 1"):
        read_annotations(path, EMOTION6, [tmp_path])


FAMILY_PRESETS = ["tiny", "demo", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-llava", "tiny-llava-onevision",
                  "tiny-smolvlm", "tiny-idefics3"]


@pytest.mark.parametrize("preset", ["tiny", "demo", "tiny-qwen3-vl", "tiny-llava-onevision", "tiny-smolvlm"])
def test_reused_visual_tokens_give_the_same_loss_and_gradients(preset, tiny_adapter):
    """Handing the language model each image's visual tokens instead of its pixels changes
    neither the loss nor the gradients (the vision side is frozen)."""
    from emovlm_kd.models.registry import get_preset, load_vlm
    from emovlm_kd.stages.instruct import VisualTokenReuse

    adapter = tiny_adapter if preset == "tiny" else load_vlm(get_preset(preset), seed=0)
    for module in adapter.vision_modules().values():
        module.requires_grad_(False)
    images = [Image.new("RGB", (120, 90), (10, 120, 30)), Image.linear_gradient("L").convert("RGB").resize((96, 140))]
    inputs = adapter.encode(images, ["Which emotion?", "Describe the key elements."],
                            ["{'emotion': 'joy'}", "A green field under a grey sky."])
    reuse = VisualTokenReuse(adapter)
    reused = reuse.replace_pixels(inputs, ["a.png", "b.png"])
    assert "pixel_values" not in reused and len(reuse.parts) == 2

    def loss_and_grads(batch):
        adapter.model.zero_grad()
        loss = adapter.model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    expected_loss, expected = loss_and_grads(inputs)
    loss, grads = loss_and_grads(reused)
    adapter.model.zero_grad()
    assert torch.allclose(loss, expected_loss, atol=1e-5)
    assert grads.keys() == expected.keys() and grads
    assert all(torch.allclose(grads[n], expected[n], atol=1e-5) for n in grads)
    # A second batch of the same images runs no visual pass.
    calls = []
    hook = next(iter(adapter.vision_modules().values())).register_forward_hook(lambda *a: calls.append(1))
    try:
        reuse.replace_pixels(inputs, ["a.png", "b.png"])
    finally:
        hook.remove()
    assert calls == []


def test_a_qlora_run_is_scored_in_four_bits_with_its_adapter_unmerged(tmp_path):
    """The loader's choice follows the method the run was tuned with."""
    from emovlm_kd.config import RunConfig
    from emovlm_kd.io import write_json
    from emovlm_kd.run_folder import RunFolder

    run = RunFolder(RunConfig(preset="tiny"), tmp_path)
    expected = {"qlora": {"quantize_4bit": True, "merge": False},
                "lora": {"quantize_4bit": False, "merge": True},
                "full": {"quantize_4bit": False, "merge": True}}
    for method, loading in expected.items():
        write_json(run.stage_dir("instruct") / "metrics.json", {"method": method})
        assert run.tuned_loading() == loading


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_four_bit_loading_leaves_the_vision_side_unquantised(preset):
    """bitsandbytes skips modules whose names contain a skip entry: every linear layer of the
    vision side must match one, and no linear layer of the language model but lm_head."""
    from emovlm_kd.models.registry import get_preset
    from emovlm_kd.models.vlm import get_adapter_class
    from emovlm_kd.models.vlm.base import nf4_quantization

    chosen = get_preset(preset)
    adapter_class = get_adapter_class(chosen.family)
    config = adapter_class.tiny_config(**chosen.tiny_overrides)
    skip = adapter_class.quantization_skip_modules(config)
    with torch.device("meta"):
        model = adapter_class.model_class()(config)
    shell = adapter_class.__new__(adapter_class)
    shell.model = model
    vision = {id(m) for module in shell.vision_modules().values() for m in module.modules()}
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert linears
    for name, module in linears:
        skipped = any(entry in name for entry in skip)
        if id(module) in vision:
            assert skipped, name
        elif not name.endswith("lm_head"):
            assert not skipped, name
    assert nf4_quantization(skip).llm_int8_skip_modules == skip
