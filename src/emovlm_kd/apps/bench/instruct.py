"""`bench`'s instruction-tuning figure: one epoch of the reference's way against the stage's.

The reference way: every (image, task) pair its own example, batch 1, the visual encoder run
for each, vocabulary logits at every position (a plain `model(**inputs, labels=...)`). Ours,
as the instruct stage trains: an image's three tasks packed into one sequence
(`VLMAdapter.encode_packed`), so its visual encoder, image tokens and system prompt run once
per image, and logits only where the loss needs them. Both train the same LoRA adapter (the
stage's settings) with an optimizer step after every sequence, on the same images and answers
of realistic length. The two ways take turns image by image (`paired_ratio`), so a shared,
noisy machine slows both alike.
"""

from __future__ import annotations

import torch
from PIL import Image

from emovlm_kd.analysis.measure import paired_ratio
from emovlm_kd.prompts import (
    INFERENCE_PROMPT,
    OBSERVATION_PROMPT,
    classification_answer,
    classification_prompt,
)

# What `emovlm-kd annotate` writes, at its usual length: key elements ~60 tokens, reasoning ~120.
KEY_ELEMENTS = ("A small child in a red raincoat stands alone at the end of a wooden pier. The sky is dark grey and "
                "heavy with low clouds, the water below is choppy, and a single gull hangs in the wind above her. "
                "Her hands are deep in her pockets and her head is bowed.")
REASONING = ("The image evokes sadness. The child stands alone at the far end of the pier, with no one near her, "
             "which reads as isolation. Her bowed head and the hands hidden in her pockets are a posture of "
             "withdrawal and dejection rather than of play or curiosity. The dark, heavy clouds and the grey, choppy "
             "water drain the scene of warmth and colour, and the single gull in the wind repeats her loneliness. "
             "Nothing in the picture offers comfort or company, so the mood that follows from these elements is a "
             "quiet, heavy sadness, the feeling of waiting for someone who does not come.")


def instruct_figures(models, images: list[Image.Image]) -> dict:
    """Seconds per image of one epoch each way, and their ratio `instruct_speedup`.

    `models` is the bench's `Models`; its VLM gets a LoRA adapter for the timing, removed after.
    """
    from emovlm_kd.config import InstructStageConfig
    from emovlm_kd.stages.instruct import apply_lora, keep_answer_logits

    adapter = models.adapter
    prompts = [classification_prompt(models.taxonomy), OBSERVATION_PROMPT, INFERENCE_PROMPT]
    labels = models.taxonomy.labels
    answers = [[classification_answer(labels[index % len(labels)]), KEY_ELEMENTS, REASONING] for index in range(len(images))]
    settings = InstructStageConfig()
    for module in adapter.vision_modules().values():
        module.requires_grad_(False)
    model = apply_lora(adapter, settings, quantized=False)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)

    def step(inputs: dict) -> None:
        loss = model(**{key: value.to(models.device) for key, value in inputs.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def reference(batch: list[int]) -> None:
        for index in batch:
            for prompt, answer in zip(prompts, answers[index]):
                step(adapter.encode([images[index]], [prompt], [answer]))

    def ours(batch: list[int]) -> None:
        inputs = adapter.encode_packed([images[i] for i in batch], [prompts] * len(batch), [answers[i] for i in batch])
        step(keep_answer_logits(inputs))

    # One epoch each in the stage's batches of images, after one warm-up batch each way.
    order = list(range(len(images)))
    batches = [order[start : start + settings.batch_size] for start in range(0, len(order), settings.batch_size)]
    try:
        speedup, reference_seconds, ours_seconds = paired_ratio(reference, ours, batches, repeats=1)
    finally:
        model.unload()  # the VLM as it was, for the other figures
        adapter.model.eval()
    tokens = {task: len(adapter.answer_ids(answer))
              for task, answer in zip(("classification", "observation", "inference"), answers[0])}
    return {
        "instruct": {"images": len(images), "answer_tokens": tokens, "reference_seconds_per_image": reference_seconds,
                     "ours_seconds_per_image": ours_seconds},
        "instruct_speedup": speedup,
    }
