"""Packed instruction tuning: an image's tasks in one sequence train exactly as the tasks one
by one, for the tiny model of every VLM family."""

import json
import os

import pytest
import torch
from PIL import Image

from emovlm_kd.config import InstructStageConfig
from emovlm_kd.errors import UserError
from emovlm_kd.models.registry import PRESETS, load_vlm
from emovlm_kd.models.vlm import ADAPTERS
from emovlm_kd.models.vlm.base import block_attention
from emovlm_kd.stages.instruct import VisualTokenReuse, apply_lora, keep_answer_logits

# Two images of different sizes (different numbers of image tokens for most families), three
# tasks each whose prompts and answers differ in length.
PROMPTS = ["Which emotion does this image evoke? Answer in the form {'emotion': '<category>'}.",
           "Describe the key elements.",
           "Describe how the emotion this image evokes can be inferred from its key elements."]
ANSWERS = [
    ["{'emotion': 'joy'}", "A green field under a grey sky, a long road and two people walking.", "The road is calm."],
    ["{'emotion': 'fear'}", "A dark alley.", "Long shadows hide what might be there; the light is cold and thin, "
                                             "so the scene feels threatening."],
]


def images():
    return [Image.new("RGB", (120, 90), (10, 120, 30)), Image.linear_gradient("L").convert("RGB").resize((96, 140))]


def tiny_adapter_of(family: str):
    """The family's smallest offline model (LLaVA's `demo` preset loads a pretrained tower)."""
    preset = next(p for p in PRESETS.values() if p.family == family and p.name.startswith("tiny"))
    return load_vlm(preset, seed=0)


@pytest.fixture(scope="module", params=list(ADAPTERS))
def tuned(request):
    """(adapter, LoRA model) per family: LoRA as the stage applies it, without dropout, and with
    random weights (B starts at zero, which would leave A without gradients)."""
    adapter = tiny_adapter_of(request.param)
    for module in adapter.vision_modules().values():
        module.requires_grad_(False)
    model = apply_lora(adapter, InstructStageConfig(lora_dropout=0.0), quantized=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.eval()
    return adapter, model


def loss_and_lora_gradients(model, losses) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = losses()
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if "lora_" in name}
    model.zero_grad()
    return loss.detach(), gradients


def test_packed_loss_and_lora_gradients_equal_per_example_training(tuned):
    adapter, model = tuned
    batch = images()

    def per_example():
        # Each (image, task) its own sequence, weighted by its answer tokens: the mean over
        # every answer token of the six examples, as one batch of them would give.
        total, tokens = 0, 0
        for image, answers in zip(batch, ANSWERS):
            for prompt, answer in zip(PROMPTS, answers):
                inputs = adapter.encode([image], [prompt], [answer])
                count = int((inputs["labels"] != -100).sum())
                total = total + model(**inputs).loss * count
                tokens += count
        return total / tokens

    packed = adapter.encode_packed(batch, [PROMPTS, PROMPTS], ANSWERS)
    assert packed["input_ids"].shape[0] == 2 and packed["attention_mask"].shape[1] == 1
    expected_loss, expected = loss_and_lora_gradients(model, per_example)
    assert expected and all(gradient.abs().sum() > 0 for gradient in expected.values())
    # Packed, with logits at the targets only; then as the stage trains: with visual tokens
    # computed once per image and reused.
    loss, gradients = loss_and_lora_gradients(model, lambda: model(**keep_answer_logits(packed)).loss)
    reuse = VisualTokenReuse(adapter)
    reused = reuse.replace_pixels(keep_answer_logits(packed), ["a", "b"])
    reused_loss, reused_gradients = loss_and_lora_gradients(model, lambda: model(**reused).loss)
    for got, got_gradients in ((loss, gradients), (reused_loss, reused_gradients)):
        torch.testing.assert_close(got, expected_loss, atol=1e-4, rtol=1e-4)
        assert got_gradients.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got_gradients[name], expected[name], atol=1e-4, rtol=1e-4, msg=name)


def test_packed_positions_are_each_tasks_own(tuned):
    """Every token of a task's block, and the shared opening before it, carries the id, label and
    position (multimodal rope included) it has in the task's own sequence."""
    adapter, _ = tuned
    batch = images()
    packed = adapter.encode_packed(batch, [PROMPTS, PROMPTS], ANSWERS)
    allowed = packed["attention_mask"]
    if allowed.dtype != torch.bool:  # eager attention: an additive bias
        allowed = allowed == 0
    for row, (image, answers) in enumerate(zip(batch, ANSWERS)):
        labels = packed["labels"][row].tolist()
        # The last token of each task's block: the end-of-turn token that closes its answer.
        ends = [c for c, label in enumerate(labels) if label != -100 and (c + 1 == len(labels) or labels[c + 1] == -100)]
        assert len(ends) == len(PROMPTS)
        for end, prompt, answer in zip(ends, PROMPTS, answers):
            alone = adapter.encode([image], [prompt], [answer])
            positions, _ = adapter.prompt_positions(alone)
            seen = allowed[row, 0, end].nonzero()[:, 0]  # what it attends: the opening and its own block
            assert torch.equal(packed["input_ids"][row, seen], alone["input_ids"][0])
            assert torch.equal(packed["labels"][row, seen], alone["labels"][0])
            assert torch.equal(packed["position_ids"][..., row, seen], positions[..., 0, :])


def test_a_task_sees_no_other_task(tuned):
    """Changing the first task's answer leaves the later tasks' per-token losses as they were;
    with a plain causal mask instead of the block mask, it would not."""
    adapter, model = tuned
    image = images()[:1]

    def token_losses(answers, causal=False):
        inputs = adapter.encode_packed(image, [PROMPTS], [answers])
        if causal:
            inputs["attention_mask"] = adapter._attention_bias(block_attention(torch.zeros_like(inputs["input_ids"])))
        with torch.no_grad():
            logits = model(**inputs).logits[0, :-1].float()
        targets = inputs["labels"][0, 1:]
        scored = targets != -100
        return torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="none")

    first = ANSWERS[0]
    changed = ["{'emotion': 'sadness'}", *first[1:]]
    later = sum(len(adapter.answer_ids(answer)) for answer in first[1:])
    before, after = token_losses(first), token_losses(changed)
    torch.testing.assert_close(after[-later:], before[-later:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[:-later], before[: len(after) - later], atol=1e-3)
    leaky_before, leaky_after = token_losses(first, causal=True), token_losses(changed, causal=True)
    assert not torch.allclose(leaky_after[-later:], leaky_before[-later:], atol=1e-4)


def test_a_chat_with_the_image_after_the_prompt_is_refused_in_one_sentence():
    adapter = tiny_adapter_of("qwen2_vl")
    chat = adapter.prompt_text
    adapter.prompt_text = lambda prompt, image_text: chat(prompt, "").replace(prompt, prompt + image_text)
    with pytest.raises(UserError, match=r"cannot be packed for qwen2_vl, .* set instruct\.pack_tasks=false\.$"):
        adapter.encode_packed(images(), [PROMPTS[:2]] * 2, [answers[:2] for answers in ANSWERS])


def test_instruct_trains_on_packed_tasks_decoded_in_workers(small_manifest, tmp_path, monkeypatch):
    """The stage on packed tasks: one step per image, images decoded in a DataLoader worker."""
    from fast_runs import fast_config

    from emovlm_kd import run_folder
    from emovlm_kd.stages.runner import train

    lines = [json.loads(line) for line in small_manifest.read_text().splitlines()]
    train_rows = [row for row in lines if row["split"] == "train"]
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("".join(json.dumps({"image": row["image"], "label": row["label"],
                                               "key_elements": "A round yellow face.",
                                               "reasoning": "The mouth and eyes shape the mood."}) + "\n"
                                   for row in train_rows[:4]))
    decoded_in = tmp_path / "pids"
    load_rgb = run_folder.load_rgb

    def recording_load_rgb(path):
        with decoded_in.open("a") as pids:
            pids.write(f"{os.getpid()}\n")
        return load_rgb(path)

    monkeypatch.setattr("emovlm_kd.stages.instruct.load_rgb", recording_load_rgb)
    config = fast_config(small_manifest, tmp_path / "cache", f"instruct.annotations={annotations}",
                         "instruct.pack_tasks=true", "instruct.workers=1", "instruct.batch_size=4", "instruct.method=lora",
                         "instruct.reuse_visual_tokens=true", "instruct.epochs=2")
    train(config, tmp_path / "run", stages=("instruct",))
    metrics = json.loads((tmp_path / "run" / "instruct" / "metrics.json").read_text())
    assert metrics["examples"]["observation"] == 4
    steps = metrics["log_history"][-1]["step"]
    assert steps == 2 * -(-len(train_rows) // 4)  # 2 epochs of images / batch size, not examples / batch size
    assert metrics["train_loss"] > 0
    pids = decoded_in.read_text().split()
    assert pids and str(os.getpid()) not in pids
    # Two epochs, each image decoded once: the second epoch's workers read the kept tokens' sizes.
    assert len(pids) == len(train_rows)


def test_a_batch_of_kept_images_is_encoded_alike_without_decoding_them(tuned, monkeypatch):
    from emovlm_kd.stages.instruct import Example, encode_batch

    adapter, _ = tuned
    pictures = [Image.new("RGB", (120, 90), (10, 120, 30)), Image.linear_gradient("L").convert("RGB").resize((96, 140))]
    batch = [tuple(Example(f"{n}.png", task, prompt, answer, f"key{n}") for task, prompt, answer
                   in zip(("classification", "observation"), PROMPTS[:2], ANSWERS[n][:2])) for n in range(2)]
    monkeypatch.setattr(Example, "load", lambda self: pictures[int(self.picture[-1])])
    decoded = encode_batch(adapter, batch)
    assert decoded["picture_sizes"] == [(120, 90), (96, 140)]

    def refuse(self):
        raise AssertionError("a kept image was decoded again")

    monkeypatch.setattr(Example, "load", refuse)
    kept = encode_batch(adapter, batch, kept_sizes=dict(zip(decoded["image_keys"], decoded["picture_sizes"])))
    assert kept.keys() == decoded.keys()
    for key, value in decoded.items():
        if key not in adapter.image_input_keys or key in adapter.scoring_input_keys:  # all but the pixels
            assert torch.equal(kept[key], value) if torch.is_tensor(value) else kept[key] == value, key
    assert not torch.equal(kept["pixel_values"], decoded["pixel_values"])
