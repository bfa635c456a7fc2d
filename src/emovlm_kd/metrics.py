"""Classification metrics on probabilities and labels: pure functions, no models, no files.

Conventions (the report and the tests that recount them rely on these):
- confusion[t, p] counts images of true class t predicted as p;
- precision of a class never predicted is 0, recall of a class absent from the truth is 0;
- macro-F1 averages F1 over the classes present in the truth or the predictions;
- calibration uses the top-1 probability as confidence, in `CALIBRATION_BINS` equal-width
  bins over (0, 1], a bin holding confidences in (lower, upper];
- uncertainty is a 95% percentile bootstrap over images (`BOOTSTRAP_RESAMPLES` resamples,
  seeded); comparisons of two models resample the same images for both (paired).
"""

from __future__ import annotations

import torch

CALIBRATION_BINS = 15
BOOTSTRAP_RESAMPLES = 2000


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[K, K] counts; rows are true classes, columns predicted ones."""
    flat = labels.long() * num_labels + predicted.long()
    return torch.bincount(flat, minlength=num_labels * num_labels).view(num_labels, num_labels)


def per_class_scores(confusion: torch.Tensor) -> dict[str, list]:
    """Precision, recall, F1 and support per class, from a confusion matrix."""
    true_positive = confusion.diag().double()
    predicted = confusion.sum(0).double()
    support = confusion.sum(1).double()
    precision = torch.where(predicted > 0, true_positive / predicted.clamp_min(1), torch.zeros_like(predicted))
    recall = torch.where(support > 0, true_positive / support.clamp_min(1), torch.zeros_like(support))
    both = predicted + support
    f1 = torch.where(both > 0, 2 * true_positive / both.clamp_min(1), torch.zeros_like(both))
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.long().tolist(),
        "present": (both > 0).tolist(),
    }


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions."""
    scores = per_class_scores(confusion)
    present = [f1 for f1, seen in zip(scores["f1"], scores["present"]) if seen]
    return sum(present) / len(present) if present else 0.0


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per confidence bin: its bounds, image count, mean confidence and accuracy (None if empty)."""
    confidence, predicted = probs.double().max(-1)
    correct = (predicted == labels).double()
    # Bin i holds confidences in (i/bins, (i+1)/bins]; ceil puts an exact bound in the lower bin.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    rows = []
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        rows.append(
            {
                "lower": i / bins,
                "upper": (i + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(bins: list[dict]) -> float:
    """ECE: the image-weighted mean gap between confidence and accuracy over the bins."""
    total = sum(row["count"] for row in bins)
    if total == 0:
        return 0.0
    return sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in bins if row["count"]) / total


def classification_report(probs: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    """Everything the evaluation reports for one model, from [N, K] probabilities and [N] labels."""
    predicted = probs.argmax(-1)
    confusion = confusion_matrix(predicted, labels, len(class_names))
    scores = per_class_scores(confusion)
    bins = reliability_bins(probs, labels)
    return {
        "accuracy": float((predicted == labels).double().mean()) if len(labels) else 0.0,
        "macro_f1": macro_f1(confusion),
        "ece": expected_calibration_error(bins),
        "per_class": {
            name: {key: scores[key][k] for key in ("precision", "recall", "f1", "support")}
            for k, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
        "reliability": bins,
    }


def complementarity(first: torch.Tensor, second: torch.Tensor, fused: torch.Tensor) -> dict:
    """How two models' right answers overlap, and how much of what either gets the fusion keeps.

    Inputs are [N] booleans: is each model right on each image. `oracle` is the accuracy of
    always picking whichever of the two is right; `gap_recovered` is the share of the distance
    from the better single model to the oracle that the fused model closes (None when the
    oracle is no better than the better model).
    """
    first, second, fused = first.bool(), second.bool(), fused.bool()
    images = len(first)
    cells = {
        "both_right": first & second,
        "only_first_right": first & ~second,
        "only_second_right": ~first & second,
        "both_wrong": ~first & ~second,
    }

    def share(mask: torch.Tensor) -> float:
        return float(mask.sum()) / images if images else 0.0

    oracle = share(first | second)
    best_single = max(share(first), share(second))
    fused_accuracy = share(fused)
    gap = oracle - best_single
    return {
        "images": images,
        "counts": {name: int(mask.sum()) for name, mask in cells.items()},
        "fractions": {name: share(mask) for name, mask in cells.items()},
        # Of the images in each cell, how many the fused model gets right.
        "fused_right": {name: int((mask & fused).sum()) for name, mask in cells.items()},
        "first_accuracy": share(first),
        "second_accuracy": share(second),
        "best_single": best_single,
        "oracle": oracle,
        "fused_accuracy": fused_accuracy,
        "gap_recovered": (fused_accuracy - best_single) / gap if gap > 0 else None,
    }


def _confusions(predicted: torch.Tensor, labels: torch.Tensor, num_labels: int, index: torch.Tensor) -> torch.Tensor:
    """[R, K, K] confusion matrices of R resamples, each a row of `index` [R, N]."""
    resamples = index.shape[0]
    cells = labels[index] * num_labels + predicted[index]  # [R, N]
    offsets = torch.arange(resamples)[:, None] * num_labels * num_labels
    counts = torch.bincount((cells + offsets).flatten(), minlength=resamples * num_labels * num_labels)
    return counts.reshape(resamples, num_labels, num_labels)


def _scores(confusions: torch.Tensor) -> dict[str, torch.Tensor]:
    """[R] accuracy and macro-F1 of each confusion matrix [R, K, K] (as `macro_f1` defines it)."""
    true_positive = confusions.diagonal(dim1=1, dim2=2).double()
    truth, predicted = confusions.sum(2).double(), confusions.sum(1).double()
    f1 = 2 * true_positive / (truth + predicted).clamp_min(1)
    present = (truth + predicted) > 0
    return {
        "accuracy": true_positive.sum(1) / confusions.sum((1, 2)).clamp_min(1),
        "macro_f1": (f1 * present).sum(1) / present.sum(1).clamp_min(1),
    }


def bootstrap_index(images: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """[R, N] image indices of R bootstrap resamples, the same for every model (paired)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(images, (resamples, images), generator=generator)


def bootstrap_intervals(predicted: torch.Tensor, labels: torch.Tensor, num_labels: int, index: torch.Tensor) -> dict:
    """95% percentile bootstrap intervals of accuracy and macro-F1: {metric: [low, high]}."""
    scores = _scores(_confusions(predicted, labels, num_labels, index))
    return {name: _percentiles(values) for name, values in scores.items()}


def paired_bootstrap(
    predicted: torch.Tensor, baseline: torch.Tensor, labels: torch.Tensor, num_labels: int, index: torch.Tensor
) -> dict:
    """`predicted` minus `baseline` in accuracy and macro-F1 on the same images: the observed
    difference, its 95% interval over paired resamples, and the share of resamples in which
    `predicted` is not better (a one-sided bootstrap p-value)."""
    everything = torch.arange(len(labels))[None]
    result = {}
    observed = {name: _scores(_confusions(predicted, labels, num_labels, everything))[name]
                - _scores(_confusions(baseline, labels, num_labels, everything))[name] for name in ("accuracy", "macro_f1")}
    ours = _scores(_confusions(predicted, labels, num_labels, index))
    theirs = _scores(_confusions(baseline, labels, num_labels, index))
    for name in ("accuracy", "macro_f1"):
        difference = ours[name] - theirs[name]
        result[name] = {
            "difference": float(observed[name][0]),
            "ci95": _percentiles(difference),
            "p_not_better": float((difference <= 0).double().mean()),
        }
    return result


def _percentiles(values: torch.Tensor) -> list[float]:
    return [float(values.quantile(0.025)), float(values.quantile(0.975))]
