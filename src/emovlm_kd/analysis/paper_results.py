"""The paper's reported top-1 accuracies (%) and head size, to put our numbers beside them.

Lee, Lee & Park, "EmoVLM-KD" (CVPR 2025 workshops), on each dataset's test split with
Qwen2-VL-7B-Instruct and a ViT-B/16-384 teacher (the `paper` preset).
"""

from __future__ import annotations

from emovlm_kd.data.datasets import DATASET_PRESETS
from emovlm_kd.errors import UserError

PAPER_ACCURACY: dict[str, dict[str, float]] = {
    "fi": {"emovlm_kd": 79.51, "vlm": 71.19, "teacher": 68.86},
    "emotion6": {"emovlm_kd": 73.91},
    "flickr": {"emovlm_kd": 88.90},
    "instagram": {"emovlm_kd": 89.59},
}
PAPER_PRESET = "paper"
# The share of the VLM's parameters the paper quotes for its head.
PAPER_HEAD_SHARE = 0.003 / 100


def metrics_dataset(metrics: dict, dataset: str | None = None) -> str:
    """The dataset preset a metrics file is on: `dataset` if given, else the one it records."""
    name = (dataset or metrics.get("dataset") or "").strip().lower()
    if not name:
        raise UserError(
            "the metrics file does not say which dataset it is on; pass --dataset NAME "
            f"(one of {', '.join(DATASET_PRESETS)})."
        )
    if name not in DATASET_PRESETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_PRESETS)}.")
    return name


def comparison(metrics: dict, dataset: str) -> list[dict]:
    """Per model: our accuracy and the paper's (None where it reports none), in percent."""
    from emovlm_kd.analysis.evaluation import MODELS

    reported = PAPER_ACCURACY.get(dataset, {})
    rows = []
    for model in MODELS:
        if model not in metrics:
            raise UserError(
                f"the metrics file has no {model!r} entry; give a metrics.json written by train or evaluate."
            )
        ours = 100 * metrics[model]["accuracy"]
        paper = reported.get(model)
        rows.append(
            {"model": model, "ours": ours, "paper": paper, "difference": None if paper is None else ours - paper}
        )
    return rows
