"""Training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The label of an image distilled without one (the KL term needs no label).
UNLABELLED = -100


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels).

    Logits are [B, K], labels [B]; the soft term is averaged over the batch, the hard term
    over its labelled rows (a row labelled `UNLABELLED` has only the soft term). The T^2 factor keeps
    the soft term's gradients on the scale of the hard term's as T grows (Hinton et al.).
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    # Unlabelled rows (label -100) learn from the teacher alone.
    labelled = labels != UNLABELLED
    hard = F.cross_entropy(student_logits[labelled], labels[labelled]) if labelled.any() else student_logits.sum() * 0
    return alpha * t * t * soft + (1.0 - alpha) * hard
