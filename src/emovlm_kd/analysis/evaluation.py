"""Scores of the four models of a run on one split: teacher, VLM alone, head alone, EmoVLM-KD.

`score_run` gives each model's [N, K] class probabilities (from the run's artifacts and the
caches); `summarize` turns them into the metrics file; `prediction_records` into one record
per image. `evaluate_run` is both first steps at once, as `train` records it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from emovlm_kd import distributed
from emovlm_kd.data.datasets import SPLITS, Sample, get_dataset_preset
from emovlm_kd.errors import UserError
from emovlm_kd.io import write_json
from emovlm_kd.labels import TAXONOMIES
from emovlm_kd.metrics import (
    bootstrap_index,
    bootstrap_intervals,
    classification_report,
    complementarity,
    paired_bootstrap,
)
from emovlm_kd.models.configs import KEEP_AGREEMENT
from emovlm_kd.models.gate import Gate, sure_agreement
from emovlm_kd.models.teacher import load_teacher
from emovlm_kd.run_folder import RunFolder
from emovlm_kd.stages.caches import teacher_logits
from emovlm_kd.stages.gate import gate_inputs
from emovlm_kd.stages.registry import STAGE_NAMES

MODELS = ("teacher", "vlm", "head", "emovlm_kd")
# The pairs whose overlap the report shows: the paper's motivation (VLM vs its ViT teacher)
# and the two inputs the gate actually fuses (VLM vs the distilled head).
PAIRS = (("vlm", "teacher"), ("vlm", "head"))
ALL_SPLITS = "all"


@dataclass
class Scores:
    """Each model's class probabilities on the same images, with their true labels."""

    samples: list[Sample]
    labels: torch.Tensor  # [N] class ids
    class_names: tuple[str, ...]
    probs: dict[str, torch.Tensor]  # model name -> [N, K]
    split: str


def split_names(run: RunFolder, split: str) -> tuple[str, ...]:
    """The splits `split` stands for: itself, or every non-empty one for 'all'."""
    if split != ALL_SPLITS:
        # An unknown or empty split ends here, in one sentence; an alias becomes its name.
        return (run.dataset.split(split)[0].split,)
    names = tuple(name for name in SPLITS if run.dataset.splits.get(name))
    if not names:
        raise UserError(f"{run.dataset.root} has no images to evaluate; check it with `emovlm-kd data check`.")
    return names


def score_run(run: RunFolder, split: str = "test") -> Scores:
    """[N, K] probabilities of teacher, VLM, head and gated EmoVLM-KD on `split` (or 'all')."""
    run.require(*STAGE_NAMES)
    names = split_names(run, split)
    samples = [sample for name in names for sample in run.dataset.splits[name]]
    inputs = gate_inputs(run, names)
    head_logits = torch.cat([inputs[name][0] for name in names])
    vlm_logprobs = torch.cat([inputs[name][1] for name in names])
    teacher, processor = load_teacher(str(run.stage_dir("teacher")), run.dataset.taxonomy.labels)
    gate = Gate.from_pretrained(run.stage_dir("gate"))
    with torch.no_grad():
        probs = {
            "teacher": teacher_logits(run, teacher, processor, samples).softmax(-1),
            "vlm": vlm_logprobs.exp(),
            "head": head_logits.softmax(-1),
            "emovlm_kd": gate(head_logits, vlm_logprobs).softmax(-1),
        }
    return Scores(samples, run.labels(samples), run.dataset.taxonomy.labels, probs, split)


def summarize(scores: Scores, run: RunFolder, own_data: bool = True) -> dict:
    """The metrics file: per model accuracy, macro-F1, per-class scores, confusion, calibration;
    and how the VLM's right answers overlap with the teacher's and the head's.

    `own_data` says the images come from the run's own dataset, so that a split the gate
    was trained on can be flagged.
    """
    correct = {name: scores.probs[name].argmax(-1) == scores.labels for name in MODELS}
    data = run.config.data
    result = {
        "split": scores.split,
        "images": len(scores.samples),
        # Which dataset the numbers are on, so that `compare` can put the paper's beside them.
        "dataset": data.dataset,
        "data_root": str(data.root),
        "taxonomy": run.dataset.taxonomy.name,
        "preset": run.config.preset,
        "labels": list(scores.class_names),
        "gate_trained_on": run.config.gate.split,
        "gate_saw_these_images": own_data and scores.split in (run.config.gate.split, ALL_SPLITS),
    }
    result.update(
        {name: classification_report(scores.probs[name], scores.labels, scores.class_names) for name in MODELS}
    )
    # Uncertainty: the same bootstrap resamples of the images for every model, so that
    # differences between models are paired.
    num_labels = len(scores.class_names)
    predicted = {name: scores.probs[name].argmax(-1) for name in MODELS}
    index = bootstrap_index(len(scores.labels))
    for name in MODELS:
        result[name]["ci95"] = bootstrap_intervals(predicted[name], scores.labels, num_labels, index)
    result["paired"] = {
        f"emovlm_kd_minus_{other}": paired_bootstrap(predicted["emovlm_kd"], predicted[other], scores.labels, num_labels, index)
        for other in ("vlm", "head")
    }
    result["complementarity"] = {
        f"{first}_{second}": dict(
            complementarity(correct[first], correct[second], correct["emovlm_kd"]), first=first, second=second
        )
        for first, second in PAIRS
    }
    result["agreement"] = agreement_kept(scores.probs, run.config.gate.keep_agreement or KEEP_AGREEMENT)
    return result


def agreement_kept(probs: dict[str, torch.Tensor], confidence: float) -> dict:
    """Images where head and VLM name the same label with >= `confidence` each, and how many
    of them the fused model labels the same way."""
    head_label = probs["head"].argmax(-1)
    sure = sure_agreement(probs["head"].log(), probs["vlm"].log(), confidence)
    kept = sure & (probs["emovlm_kd"].argmax(-1) == head_label)
    return {"confidence": confidence, "agreeing": int(sure.sum()), "kept": int(kept.sum())}


def evaluate_run(run: RunFolder, split: str = "test") -> dict:
    """Metrics of each model on `split`, from the run's artifacts and caches (see `summarize`)."""
    return summarize(score_run(run, split), run)


def evaluate_finished_run(run: RunFolder) -> dict | None:
    """The test metrics of a run whose every stage is finished, written to RUN/metrics.json;
    None where a stage is unfinished or there is no test split (and on ranks other than 0)."""
    if not (all(run.is_done(stage) for stage in STAGE_NAMES) and run.dataset.splits.get("test")):
        return None
    metrics = evaluate_run(run, "test")  # on every rank: it fills shared caches
    if not distributed.is_main():
        return None
    write_json(run.directory / "metrics.json", metrics)
    return metrics


def prediction_records(scores: Scores) -> Iterator[dict]:
    """One record per image: its path, true label, and each model's label and probabilities."""
    names = scores.class_names
    for index, sample in enumerate(scores.samples):
        record = {"image": str(sample.path), "split": sample.split, "label": sample.label}
        for model in MODELS:
            probs = scores.probs[model][index]
            record[model] = {
                "label": names[int(probs.argmax())],
                "probs": {name: float(p) for name, p in zip(names, probs)},
            }
        yield record


def run_taxonomy_name(run: RunFolder) -> str:
    """The taxonomy the run was trained on, read from its teacher (its data need not exist)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(run.require("teacher"))
    labels = tuple(config.id2label[i] for i in range(config.num_labels))
    for taxonomy in TAXONOMIES.values():
        if taxonomy.labels == labels:
            return taxonomy.name
    raise UserError(f"the teacher of {run.directory} has labels {', '.join(labels)}, which match no taxonomy.")


def with_data(run: RunFolder, root: str, dataset: str | None = None) -> RunFolder:
    """The same trained run, reading another dataset folder (or manifest) of its taxonomy."""
    taxonomy = run_taxonomy_name(run)
    if dataset is not None and get_dataset_preset(dataset).taxonomy != taxonomy:
        raise UserError(
            f"dataset {dataset} uses taxonomy {get_dataset_preset(dataset).taxonomy} but the run was "
            f"trained on {taxonomy}; evaluate it on a dataset of the same classes."
        )
    data = dataclasses.replace(run.config.data, root=str(root), dataset=dataset, taxonomy=taxonomy)
    return RunFolder(dataclasses.replace(run.config, data=data), run.directory)
