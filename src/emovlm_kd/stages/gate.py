"""Gate stage: fuse the head's logits and the tuned VLM's label log-probabilities.

Trains on cached tensors: head logits from cached features, VLM log-probabilities from
cached exact label scores (full distributions, never one-hot), so an epoch costs
milliseconds. By default it trains on the val split: on train, the head and the VLM have
seen the images, and their in-sample confidence would teach the gate the wrong trust.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F

from emovlm_kd import distributed
from emovlm_kd.models.configs import GateConfig
from emovlm_kd.models.gate import Gate
from emovlm_kd.models.head import DistillHead
from emovlm_kd.models.tuned import TunedVLM
from emovlm_kd.run_folder import RunFolder
from emovlm_kd.stages.caches import split_features, vlm_scores
from emovlm_kd.stages.registry import finish_stage
from emovlm_kd.stages.tensor_training import accuracy, fit_on_tensors
from emovlm_kd.tracking import EpochTracker

log = logging.getLogger("emovlm_kd")


def gate_inputs(run: RunFolder, splits: tuple[str, ...] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per split: (head logits [N, K], VLM label log-probabilities [N, K])."""
    head = DistillHead.from_pretrained(run.require("distill"))
    vlm = TunedVLM(run.load_tuned_vlm)  # loaded only if a cache misses rows
    features = split_features(run, vlm, splits)
    inputs = {}
    with torch.no_grad():
        for split, values in features.items():
            run.check_head_width(head, values.shape[1])  # [N, D]
            scores = vlm_scores(run, vlm, run.dataset.splits[split])
            inputs[split] = (head(values), scores.log_softmax(-1))
    return inputs


def train_gate_module(head_logits, vlm_logprobs, labels, config, num_labels: int, seed: int, on_epoch=None):
    """A gate fitted by Adam on (head logits, VLM log-probabilities) -> labels.

    Its L2 penalty (`weight_decay`) pulls the weights toward where they started, the product
    of the two experts, not toward zero: zero weights would be a gate that ignores both.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gate = Gate(GateConfig.shaped(config, num_labels))
        start = [parameter.detach().clone() for parameter in gate.parameters()]

        def loss(logits, index):
            pull = sum(((parameter - origin) ** 2).sum() for parameter, origin in zip(gate.parameters(), start))
            return F.cross_entropy(logits, labels[index]) + config.weight_decay / 2 * pull

        history = fit_on_tensors(
            gate,
            (head_logits, vlm_logprobs),
            labels,
            loss,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=0.0,
            seed=seed,
            description=f"gate ({config.variant})",
            on_epoch=on_epoch,
        )
    return gate, history


def train(run: RunFolder) -> dict:
    config = run.config.gate
    if config.split == "train":
        log.warning("gate: trained on the train split, whose head and VLM outputs are in-sample (the models saw "
                    "these images); gate.split=val is the default for that reason")
    # The split it learns on, and val and test to report: scoring the train split with the VLM
    # only for a metric would be a pass of the large model over the largest split.
    inputs = gate_inputs(run, tuple(dict.fromkeys((config.split, "val", "test"))))
    if config.split not in inputs:
        from emovlm_kd.errors import UserError

        raise UserError(f"gate.split={config.split!r} has no images; use train or val.")
    labels = run.labels(run.dataset.splits[config.split])
    # Caching above is shared by every rank; the gate itself trains in seconds, on rank 0.
    if not distributed.is_main():
        return finish_stage(run, "gate", {})
    tracker = EpochTracker(run.config.report_to, run.directory, "gate", dataclasses.asdict(config))
    gate, history = train_gate_module(*inputs[config.split], labels, config, len(run.dataset.taxonomy), run.config.seed,
                                      on_epoch=tracker.log)
    metrics = {"variant": config.variant, "trained_on": config.split, "history": history}
    with torch.no_grad():
        for split, (head_logits, vlm_logprobs) in inputs.items():
            metrics[f"{split}_accuracy"] = accuracy(gate(head_logits, vlm_logprobs), run.labels(run.dataset.splits[split]))
    log.info("gate: val accuracy %.3f", metrics.get("val_accuracy", float("nan")))
    tracker.finish(metrics)
    return finish_stage(run, "gate", metrics, save=gate.save_pretrained)
