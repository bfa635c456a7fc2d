"""Ablations on cached tensors: head depth, alpha, temperature and gate variant.

The VLM's pooled visual features, the teacher's logits and the VLM's label scores are
cached per image, so each setting costs one head and one gate trained on tensors in
memory: seconds. Nothing of the run is written; the caller saves the rows where it likes.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from emovlm_kd.errors import UserError
from emovlm_kd.models.configs import GATE_VARIANTS, HIDDEN_WIDTHS
from emovlm_kd.run_folder import RunFolder
from emovlm_kd.stages.caches import split_features
from emovlm_kd.stages.distill import distillation_set, train_head
from emovlm_kd.stages.gate import train_gate_module
from emovlm_kd.stages.registry import STAGE_NAMES
from emovlm_kd.stages.tensor_training import accuracy

AXES = ("depth", "alpha", "temperature", "gate")
# The paper's ablations, each varied alone around the run's own settings.
DEFAULT_VALUES = {
    "depth": list(range(1, len(HIDDEN_WIDTHS) + 1)),
    "alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
    "temperature": [1.0, 2.0, 4.0],
    "gate": list(GATE_VARIANTS),
}


@dataclass
class SplitTensors:
    """Cached per-image tensors of one split."""

    features: torch.Tensor  # [N, D] pooled visual tokens
    teacher: torch.Tensor  # [N, K] teacher logits
    vlm_logprobs: torch.Tensor  # [N, K]
    labels: torch.Tensor  # [N]


@dataclass
class AblationTensors:
    splits: dict[str, SplitTensors]
    # The head's training rows, every distillation view included (`distillation_set`).
    distill: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def cached_tensors(run: RunFolder) -> AblationTensors:
    """Every non-empty split's cached tensors and the head's training rows (computed once
    if a cache is missing rows)."""
    from emovlm_kd.models.teacher import load_teacher
    from emovlm_kd.models.tuned import TunedVLM
    from emovlm_kd.stages.caches import teacher_logits, vlm_scores

    run.require(*STAGE_NAMES)
    vlm = TunedVLM(run.load_tuned_vlm)  # loaded only if a cache misses rows
    teacher, processor = load_teacher(str(run.stage_dir("teacher")), run.dataset.taxonomy.labels)
    tensors = {}
    for split, features in split_features(run, vlm).items():
        samples = run.dataset.splits[split]
        tensors[split] = SplitTensors(
            features=features,
            teacher=teacher_logits(run, teacher, processor, samples),
            vlm_logprobs=vlm_scores(run, vlm, samples).log_softmax(-1),
            labels=run.labels(samples),
        )
    return AblationTensors(tensors, distillation_set(run, vlm, teacher, processor))


def run_settings(run: RunFolder) -> dict:
    """The run's own value of each axis."""
    return {
        "depth": run.config.distill.depth,
        "alpha": run.config.distill.alpha,
        "temperature": run.config.distill.temperature,
        "gate": run.config.gate.variant,
    }


def plan(base: dict, values: dict[str, list], grid: bool = False) -> list[dict]:
    """Settings to try: each axis varied alone around `base` (the paper's way), or, with
    `grid`, every combination of the given values. Each setting names the axis it varies."""
    if grid:
        axes = [axis for axis in AXES if axis in values]
        return [
            dict(base, **dict(zip(axes, combination)), axis="grid")
            for combination in itertools.product(*(values[axis] for axis in axes))
        ]
    return [dict(base, **{axis: value}, axis=axis) for axis in AXES if axis in values for value in values[axis]]


def ablate(run: RunFolder, settings: list[dict], cached: AblationTensors | None = None) -> list[dict]:
    """Train a head and a gate per setting on the cached tensors; accuracy on val and test.

    The head trains on train (as the distill stage does), the gate on the run's gate split.
    """
    cached = cached or cached_tensors(run)
    tensors = cached.splits
    if "test" not in tensors:
        raise UserError(f"{run.dataset.root} has no test split; ablations report test accuracy.")
    base = run_settings(run)
    num_labels = len(run.dataset.taxonomy)
    heads: dict[tuple, torch.nn.Module] = {}
    rows = []
    for setting in settings:
        head_key = (setting["depth"], setting["alpha"], setting["temperature"])
        if head_key not in heads:
            config = dataclasses.replace(
                run.config.distill, depth=setting["depth"], alpha=setting["alpha"], temperature=setting["temperature"]
            )
            heads[head_key], _ = train_head(*cached.distill, config, run.config.seed)
        head = heads[head_key]
        with torch.no_grad():
            head_logits = {split: head(values.features) for split, values in tensors.items()}
        gate_split = tensors[run.config.gate.split]
        gate, _ = train_gate_module(
            head_logits[run.config.gate.split],
            gate_split.vlm_logprobs,
            gate_split.labels,
            dataclasses.replace(run.config.gate, variant=setting["gate"]),
            num_labels,
            run.config.seed,
        )
        row = dict(setting, run_setting=all(setting[axis] == base[axis] for axis in AXES))
        with torch.no_grad():
            for split in ("val", "test"):
                if split in tensors:
                    values = tensors[split]
                    row[f"head_{split}"] = accuracy(head_logits[split], values.labels)
                    row[f"fused_{split}"] = accuracy(gate(head_logits[split], values.vlm_logprobs), values.labels)
        rows.append(row)
    return rows
