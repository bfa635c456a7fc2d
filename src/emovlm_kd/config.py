"""One typed config per stage; the defaults are the paper's settings.

A run's config is a YAML file of these sections; `key=value` overrides use dotted paths
(`distill.depth=2`). Unknown keys and wrong types are refused, naming the key. The resolved
config is saved beside every run, so each result traces back to its settings.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from emovlm_kd.errors import UserError
from emovlm_kd.models.configs import DistillationSettings, GateSettings, HeadSettings
from emovlm_kd.tracking import check_tracker


def setting(default, help_text: str, **flag) -> dataclasses.Field:
    """A config field carrying the help (and choices, metavar or type) of its command-line flag;
    `apps.cli.flags` builds the flags of a command from such fields."""
    return field(default=default, metadata={"help": help_text, **flag})


@dataclass
class DataConfig:
    root: str = "data/sample"
    # Taxonomy name; None takes the dataset preset's, or guesses from the class names.
    taxonomy: str | None = None
    # Dataset preset (fi, emoset, emotion6, ...): fixes the taxonomy and split rule.
    dataset: str | None = None
    strict: bool = False
    split_seed: int = 42
    val_fraction: float = 0.1
    # Columns of a Hugging Face `datasets` folder or Parquet file: the image, and the label
    # (class names, or ClassLabel ids).
    image_column: str = "image"
    label_column: str = "label"


@dataclass
class TeacherStageConfig:
    # None: the model preset's teacher. Any transformers image classifier id or folder works.
    model: str | None = None
    epochs: float = 10
    batch_size: int = 10
    lr: float = 3e-5
    weight_decay: float = 1e-5
    # Smallest crop area of the random resized crop (0.08 is the usual Inception setting).
    crop_scale_min: float = 0.08


@dataclass
class InstructStageConfig:
    # JSONL of {image, label, key_elements, reasoning} (from `emovlm-kd annotate`): the
    # observation and inference tasks. Must be set: 'none' tunes on classification alone.
    annotations: str | None = None
    # auto: QLoRA with bitsandbytes on a GPU, else LoRA (or the preset's own choice, 'full'
    # for randomly initialised offline VLMs). Also: qlora, lora, full.
    method: str = "auto"
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.05
    epochs: float = 5
    lr: float = 1e-4
    warmup_ratio: float = 0.03
    lr_scheduler: str = "constant_with_warmup"
    max_grad_norm: float = 0.3
    # Training sequences per step: images where tasks are packed (each with all of its tasks),
    # else (image, task) examples.
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    # auto: bf16 where the GPU supports it.
    bf16: str = "auto"
    # Annotations flagged by the checks (label leaked, section missing) are left out unless set.
    include_flagged: bool = False
    # Each image's tasks in one sequence: the system prompt and the image once, then each task's
    # prompt and answer in a block that sees the image and itself only, at the positions it has
    # alone. The loss and gradients are those of the tasks trained one by one, the image tokens
    # are run through the language model once per image, not once per task. An epoch then
    # takes one step per `batch_size` images.
    pack_tasks: bool = True
    # Processes that read, decode and tokenize the next batches while the model trains (0: none).
    workers: int = 2
    # Keep each training image's visual tokens in memory after its first pass and reuse them
    # for its other tasks and epochs (the vision side is frozen, so they never change).
    # Costs tokens x width x images of memory: for small datasets (the demo), not FI at 7B.
    reuse_visual_tokens: bool = False
    # Augmented views of each training image (the distillation views: crop, rotation, flip,
    # colour) added to the classification task; a view keeps its image's label. 0: the
    # paper's setting. Helps a VLM tuned on few images meet unseen ones (the demo's).
    views: int = 0

    def __post_init__(self):
        _require_views(self.views, "instruct")


@dataclass(kw_only=True)
class DistillStageConfig(DistillationSettings, HeadSettings):
    """The head's settings and the distillation objective's (models.configs), and how to train."""

    lr: float = 1e-5
    weight_decay: float = 1e-4
    epochs: int = 5
    batch_size: int = 32
    # Augmented views of each training image distilled besides the image itself (crop,
    # rotation, flip, colour; the teacher's logits taken on the same view). 0: the paper's
    # setting. The KL term needs no new labels, so views carry more of the teacher cheaply.
    views: int = 0

    def __post_init__(self):
        _require_views(self.views, "distill")


def _require_views(views: int, section: str) -> None:
    if views < 0:
        raise UserError(f"{section}.views={views} is a count of augmented views per image; use 0 (none) or more.")


@dataclass(kw_only=True)
class GateStageConfig(GateSettings):
    """The gate's settings (models.configs), and how to train it."""

    lr: float = 1e-4
    # L2 toward the gate's start (the product of experts), not toward zero.
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 32
    # Split whose cached head logits and VLM log-probabilities train the gate: held-out data
    # (val), where both experts are as (un)sure as on new images. 'train' is allowed, with a warning.
    split: str = "val"


@dataclass
class RunConfig:
    preset: str = "paper"
    seed: int = 42
    # Feature / logit / score caches; None: the user cache folder (~/.cache/emovlm-kd).
    cache_dir: str | None = None
    # Images per forward pass when caching features and scoring.
    batch_size: int = 8
    # Where every stage logs its losses and accuracies: none, tensorboard, wandb or mlflow.
    report_to: str = "none"
    # One section per training stage (stages.registry lists them in order).
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherStageConfig = field(default_factory=TeacherStageConfig)
    instruct: InstructStageConfig = field(default_factory=InstructStageConfig)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)
    gate: GateStageConfig = field(default_factory=GateStageConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_value(value, annotation, key: str):
    """Return `value` converted to `annotation`, or raise a UserError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key)
            except UserError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UserError(f"config key {key!r} must be a mapping of settings, not {_shown(value)}.")
        return _build(annotation, value, key + ".")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads '1e-4' (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise UserError(
            f"config key {key!r} must be {annotation.__name__}, got {_shown(value)} ({type(value).__name__})."
        )
    return value


def _shown(value) -> str:
    # Bounded: a YAML file of nested aliases would print as billions of characters.
    return reprlib.repr(value)


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    # YAML keys may be numbers or null too: compared as text.
    unknown = sorted(str(name) for name in set(data) - known)
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'; known keys here: "
            f"{', '.join(prefix + name for name in sorted(known))}."
        )
    values = {name: _check_value(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**values)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise UserError(f"override {override!r} must look like key=value, e.g. distill.depth=2.", exit_code=2)
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key!r}: {part!r} is a setting, not a section.", exit_code=2)
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a YAML file (or the defaults) with `key=value` overrides applied."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass a YAML file such as configs/demo.yaml.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config file {path} is not valid YAML ({error.__class__.__name__}); fix its syntax.") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a mapping of settings at its top level.")
    for override in overrides:
        _apply_override(data, override)
    config = _build(RunConfig, data)
    check_tracker(config.report_to)
    return config
