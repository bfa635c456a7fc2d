"""Instruction-tuning stage: LoRA (QLoRA on GPU) on the VLM's language model, three tasks.

Tasks per training image: observation (key elements), inference (reasoning), classification
({'emotion': '<label>'}); without annotations, classification alone. With `pack_tasks` (the
default) an image's tasks are trained in one sequence that holds the image once (the
adapter's `encode_packed`: the same loss and gradients as one sequence per task), and the
images are shuffled; else every (image, task) example is shuffled on its own. The loss covers
answer tokens only (the rest is masked).
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import Trainer

from emovlm_kd.augment import distillation_view
from emovlm_kd.cache import TensorCache
from emovlm_kd.data.annotations import read_annotations
from emovlm_kd.errors import UserError
from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.models.registry import load_vlm
from emovlm_kd.models.tuned import TunedVLM, resolve_method
from emovlm_kd.prompts import (
    INFERENCE_PROMPT,
    OBSERVATION_PROMPT,
    classification_answer,
    classification_prompt,
)
from emovlm_kd.run_folder import RunFolder, load_rgb
from emovlm_kd.stages.caches import view_keys, visual_fingerprint
from emovlm_kd.stages.hf_trainer import training_arguments
from emovlm_kd.stages.registry import finish_stage
from emovlm_kd.tracking import trainer_tracking

log = logging.getLogger("emovlm_kd")
# Pooled features are written to the visual-feature cache in shards of this many rows.
FEATURE_FLUSH_ROWS = 256


@dataclass(frozen=True)
class Example:
    image: Path
    task: str
    prompt: str
    answer: str
    # What the model sees: the cache key of the image (its content hash), or of one of its
    # augmented views (`view` >= 1, seeded by the key: the pixels distillation uses).
    picture: str
    view: int = 0

    def load(self):
        image = load_rgb(self.image)
        return image if self.view == 0 else distillation_view(image, random.Random(self.picture))


def build_examples(run: RunFolder) -> tuple[list[Example], dict]:
    taxonomy = run.dataset.taxonomy
    train = run.dataset.split("train")
    config = run.config.instruct
    examples = [
        Example(s.path, "classification", classification_prompt(taxonomy), classification_answer(s.label), key, view)
        for view in range(config.views + 1)
        for s, key in zip(train, view_keys(run, train, view))
    ]
    pictures = dict(zip((s.path for s in train), run.image_keys(train)))
    summary = {"classification": len(examples), "observation": 0, "inference": 0, "flagged_excluded": 0}
    if config.views:
        summary["classification_views"] = len(train) * config.views
    if annotations_file(config) is not None:
        data_root = Path(run.config.data.root)
        # Relative image paths are relative to the dataset folder (a manifest's folder).
        records = read_annotations(annotations_file(config), taxonomy, [data_root.parent if data_root.is_file() else data_root])
        by_image = {record.image: record for record in records}
        for sample in train:
            record = by_image.get(sample.path.resolve())
            if record is None:
                continue
            if record.flags and not config.include_flagged:
                summary["flagged_excluded"] += 1
                continue
            picture = pictures[sample.path]
            examples.append(Example(sample.path, "observation", OBSERVATION_PROMPT, record.key_elements, picture))
            examples.append(Example(sample.path, "inference", INFERENCE_PROMPT, record.reasoning, picture))
            summary["observation"] += 1
            summary["inference"] += 1
        summary["annotated_train_images"] = summary["observation"]
    return examples, summary


def annotations_file(config) -> str | None:
    """The instruct config's annotation file; None where it says `none` (classification alone)."""
    if config.annotations is None:
        raise UserError("instruct.annotations is not set, so instruction tuning would train the classification task "
                        "alone; point it at the JSONL that `emovlm-kd annotate` writes, or set "
                        "instruct.annotations=none to tune on classification only.")
    return None if config.annotations.strip().lower() == "none" else config.annotations


def keep_answer_logits(inputs: dict) -> dict:
    """Compute vocabulary logits only where the loss needs them: at the columns whose next
    token is a target, and no others. With a 152k vocabulary the lm_head, its gradient and
    the cross-entropy are most of a small model's step; this skips them on the prompt and
    image tokens, on the prompts between packed answers, and on padding.

    The kept columns are a boolean mask, so the model flattens them across the batch (a row
    with few targets costs no more than they do), and their targets come as `shift_labels`
    in the same order, which the causal-LM loss (and the Trainer's token count) then use as
    they are. `labels` stays, unused, so the model computes a loss.
    """
    labels = inputs["labels"]  # [B, L]
    targets = labels[:, 1:]  # column c predicts the token at c + 1
    predicts = torch.cat([targets != -100, torch.zeros_like(labels[:, :1], dtype=torch.bool)], dim=1)
    return dict(inputs, logits_to_keep=predicts, shift_labels=targets[targets != -100])


class VisualTokenReuse:
    """Each image's visual tokens, computed on its first batch and handed to the language
    model afterwards instead of its pixels: the frozen vision side runs once per image, not
    once per (task, epoch). The model takes them as `mm_encoder_outputs`, as in scoring.

    What is kept per image is every per-image part of the encoder output the language model
    reads: the merged tokens (`pooler_output`) and, for families that inject features into
    later layers (Qwen3-VL's deepstack), each such layer's part too."""

    def __init__(self, adapter, features: TensorCache | None = None):
        self.adapter = adapter
        self.output_class = None
        self.parts: dict[object, dict[str, object]] = {}
        # The visual-feature cache distillation reads: each new picture's pooled tokens go
        # there too, so the tower does not run on it again (`keys` must be its cache keys).
        self.features = features
        self.pending: dict[str, torch.Tensor] = {}
        # Each kept image's size: a later batch of it needs no pixels, only a stand-in of that
        # size (`encode_batch`). Small, so the DataLoader's workers get a copy each epoch.
        self.sizes: dict[str, tuple[int, int]] = {}

    def flush(self) -> None:
        if self.features is not None:
            self.features.add(self.pending)
        self.pending = {}

    @staticmethod
    def split(output, count: int) -> list[dict[str, object]]:
        """[{field: the image's part}] for the per-image fields of an encoder output."""
        rows: list[dict[str, object]] = [{} for _ in range(count)]
        for field, value in output.items():
            if isinstance(value, (tuple, list)) and len(value) == count and all(torch.is_tensor(v) for v in value):
                for row, part in zip(rows, value):  # one tensor per image
                    row[field] = part.detach()
            elif isinstance(value, (tuple, list)) and value and all(isinstance(v, (tuple, list)) for v in value):
                for index, row in enumerate(rows):  # per layer, one tensor per image
                    row[field] = [layer[index].detach() for layer in value]
        return rows

    def join(self, rows: list[dict[str, object]]):
        fields = {}
        for field, first in rows[0].items():
            if isinstance(first, list):
                fields[field] = [tuple(row[field][layer] for row in rows) for layer in range(len(first))]
            else:
                fields[field] = tuple(row[field] for row in rows)
        return self.output_class(**fields)

    @torch.no_grad()
    def replace_pixels(self, inputs: dict, keys: list, sizes: list[tuple[int, int]] | None = None) -> dict:
        """`inputs` with visual tokens in place of pixels; `keys` name each sequence's image
        (and `sizes` its size, kept for `encode_batch`).

        A batch holding an image not seen before runs the visual encoder once on its pixels and
        keeps every image's tokens. Packed, all tasks of an image are in its batch, so a batch
        is all new (first epoch) or all seen."""
        if any(key not in self.parts for key in keys):
            visual = self.adapter.visual_tokens(inputs)
            output = visual.encoder_output
            self.output_class = type(output)
            for key, row in zip(keys, self.split(output, len(keys))):
                self.parts.setdefault(key, row)
            self.sizes.update(zip(keys, sizes or []))
            if self.features is not None:
                self.pending.update(zip(keys, visual.pooled().cpu()))
                if len(self.pending) >= FEATURE_FLUSH_ROWS:
                    self.flush()
        pixels_only = set(self.adapter.image_input_keys) - set(self.adapter.scoring_input_keys)
        kept = {key: value for key, value in inputs.items() if key not in pixels_only}
        return dict(kept, mm_encoder_outputs={"image": self.join([self.parts[key] for key in keys])})


class InstructTrainer(Trainer):
    """The Trainer, with each batch's pixels swapped for cached visual tokens (`reuse`) in the
    main process, where the cache lives; batches are made in the DataLoader's workers."""

    def __init__(self, *args, reuse: VisualTokenReuse | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reuse = reuse

    def compute_loss(self, model, inputs, *args, **kwargs):
        keys, sizes = inputs.pop("image_keys"), inputs.pop("picture_sizes")
        if self.reuse is not None:
            inputs = self.reuse.replace_pixels(inputs, keys, sizes)
        return super().compute_loss(model, inputs, *args, **kwargs)


def training_sequences(examples: list[Example], pack_tasks: bool) -> list[tuple[Example, ...]]:
    """The Trainer's items: each image's tasks together where packed, else one example each."""
    if not pack_tasks:
        return [(example,) for example in examples]
    by_image: dict[str, list[Example]] = {}
    for example in examples:
        by_image.setdefault(example.picture, []).append(example)
    return [tuple(tasks) for tasks in by_image.values()]


def encode_batch(adapter, batch: list[tuple[Example, ...]], kept_sizes: dict[str, tuple[int, int]] | None = None) -> dict:
    """A training batch: each item's image decoded (here, in a DataLoader worker), its tasks
    packed into one sequence, logits kept where the loss needs them.

    An image whose visual tokens are kept already (`kept_sizes` holds its size) is not decoded
    nor augmented again: a blank image of its size stands in. Its size alone shapes the text
    (how many image tokens; Qwen's grid), and its pixels are replaced by the kept tokens."""
    kept_sizes = kept_sizes or {}
    images = [Image.new("RGB", kept_sizes[tasks[0].picture]) if tasks[0].picture in kept_sizes else tasks[0].load()
              for tasks in batch]
    inputs = adapter.encode_packed(images, [[task.prompt for task in tasks] for tasks in batch],
                                   [[task.answer for task in tasks] for tasks in batch])
    return dict(keep_answer_logits(inputs), image_keys=[tasks[0].picture for tasks in batch],
                picture_sizes=[image.size for image in images])


def apply_lora(adapter, config, quantized: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = adapter.model
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    # Only the language model's attention projections (the adapter names them); the vision
    # tower stays as it is.
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=adapter.lora_targets(),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train(run: RunFolder) -> dict:
    """Tune the VLM on the instruction tasks; save the LoRA adapter (or full weights) to RUN/instruct."""
    config = run.config.instruct
    method = resolve_method(config.method, run.preset.instruct_method)
    if method == "full" and not run.preset.offline:
        log.warning("instruct: training every language-model weight of a pretrained VLM; LoRA is the paper's method")
    adapter = load_vlm(run.preset, seed=run.config.seed, quantize_4bit=method == "qlora")
    examples, summary = build_examples(run)
    use_bf16 = config.bf16 == "true" or (config.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    # The visual encoder is never trained (the paper's setting, also under 'full'): the
    # head's cached features and the VLM's image tokens stay the same ones.
    for module in adapter.vision_modules().values():
        module.requires_grad_(False)
    model = adapter.model if method == "full" else apply_lora(adapter, config, quantized=method == "qlora")
    trainable = count_parameters(model, trainable_only=True)

    reuse = None
    if config.reuse_visual_tokens:
        features = TensorCache(run.cache_root, "visual", visual_fingerprint(run, TunedVLM(lambda: adapter)))
        reuse = VisualTokenReuse(adapter, features)
    sequences = training_sequences(examples, config.pack_tasks)

    stage_dir = run.stage_dir("instruct")
    report_to, callbacks = trainer_tracking(run.config.report_to, run.directory, "instruct")
    args = training_arguments(
        stage_dir / "trainer",
        seed=run.config.seed,
        bf16=use_bf16,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        activation_checkpointing=config.gradient_checkpointing,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        max_grad_norm=config.max_grad_norm,
        report_to=report_to,
        dataloader_num_workers=config.workers,
    )
    log.info("instruct: %s on %d examples (%s) in %d sequences%s, %d trainable parameters", method, len(examples),
             summary, len(sequences), ", tasks packed per image" if config.pack_tasks else "", trainable)
    trainer = InstructTrainer(model=model, args=args, train_dataset=sequences, callbacks=callbacks, reuse=reuse,
                              data_collator=functools.partial(encode_batch, adapter,
                                                              kept_sizes=reuse.sizes if reuse else None))
    trainer.train()
    if reuse is not None:
        reuse.flush()
    model.eval()
    metrics = {
        "method": method,
        "examples": summary,
        "trainable_parameters": trainable,
        "train_loss": trainer.state.log_history[-1].get("train_loss"),
        "log_history": trainer.state.log_history,
    }
    # The stage folder is replaced whole, so an adapter or model of an earlier method
    # cannot linger beside the new one.
    return finish_stage(run, "instruct", metrics,
                        save=lambda folder: model.save_pretrained(folder / ("model" if method == "full" else "adapter")))
