"""Scores of the four models of a run on one split: teacher, VLM alone, head alone, EmoVLM-KD."""

from __future__ import annotations

import torch

from emovlm_kd.errors import UserError
from emovlm_kd.models.gate import Gate
from emovlm_kd.models.teacher import load_teacher
from emovlm_kd.run import Run
from emovlm_kd.stages.features import teacher_logits
from emovlm_kd.stages.gate import gate_inputs

MODELS = ("teacher", "vlm", "head", "emovlm_kd")
MODEL_TITLES = {"teacher": "teacher", "vlm": "VLM alone", "head": "head alone", "emovlm_kd": "EmoVLM-KD (gated)"}


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict:
    """Top-1 accuracy and macro-F1 (classes absent from both truth and prediction are skipped)."""
    predicted = scores.argmax(-1)
    f1s = []
    for k in range(num_labels):
        true_positive = ((predicted == k) & (labels == k)).sum().item()
        predicted_k, actual_k = (predicted == k).sum().item(), (labels == k).sum().item()
        if predicted_k + actual_k == 0:
            continue
        f1s.append(2 * true_positive / (predicted_k + actual_k))
    return {
        "accuracy": (predicted == labels).float().mean().item(),
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
    }


def evaluate_run(run: Run, split: str = "test") -> dict:
    """Accuracy and macro-F1 of each model on `split`, from the run's artifacts and caches."""
    samples = run.dataset.split(split)
    for stage in ("teacher", "instruct", "distill", "gate"):
        run.require(stage)
    labels = run.labels(samples)
    num_labels = len(run.dataset.taxonomy)
    head_logits, vlm_probs = gate_inputs(run, (split,))[split]
    teacher, processor = load_teacher(str(run.stage_dir("teacher")), run.dataset.taxonomy.labels)
    gate = Gate.from_pretrained(run.stage_dir("gate"))
    with torch.no_grad():
        scores = {
            "teacher": teacher_logits(run, teacher, processor, samples),
            "vlm": vlm_probs,
            "head": head_logits,
            "emovlm_kd": gate(head_logits, vlm_probs),
        }
    if len(samples) == 0:
        raise UserError(f"the {split} split is empty; nothing to evaluate.")
    result = {"split": split, "images": len(samples)}
    result.update({name: classification_metrics(scores[name], labels, num_labels) for name in MODELS})
    return result


def format_table(metrics: dict) -> str:
    lines = [
        f"{metrics['split']} split, {metrics['images']} images",
        f"{'model':<20} {'accuracy':>9} {'macro-F1':>9}",
    ]
    for name in MODELS:
        row = metrics[name]
        lines.append(f"{MODEL_TITLES[name]:<20} {100 * row['accuracy']:>8.2f}% {100 * row['macro_f1']:>8.2f}%")
    return "\n".join(lines)
