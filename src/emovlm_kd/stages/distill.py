"""Distillation stage: a head on the frozen, tuned VLM's pooled visual tokens learns the teacher.

Features and teacher logits are computed once per image (cached), so every epoch, and
every rerun with another depth, alpha or temperature, trains on tensors in memory. With
`distill.views`, augmented views of each training image join the training set, each with
the teacher's logits on that same view.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from emovlm_kd import distributed
from emovlm_kd.losses import distillation_loss
from emovlm_kd.models.configs import HeadConfig
from emovlm_kd.models.head import DistillHead
from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.models.teacher import load_teacher
from emovlm_kd.models.tuned import TunedVLM
from emovlm_kd.run_folder import RunFolder
from emovlm_kd.stages.caches import split_features, teacher_logits, visual_features
from emovlm_kd.stages.registry import finish_stage
from emovlm_kd.stages.tensor_training import accuracy, fit_on_tensors
from emovlm_kd.tracking import EpochTracker

log = logging.getLogger("emovlm_kd")


def distillation_set(run: RunFolder, vlm: TunedVLM, teacher, processor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's training rows over every view of the train split: pooled features
    [N * (1 + views), D], teacher logits on the same views [N * (1 + views), K], labels."""
    train = run.dataset.split("train")
    views = range(run.config.distill.views + 1)
    features = torch.cat([visual_features(run, vlm, train, view) for view in views])
    targets = torch.cat([teacher_logits(run, teacher, processor, train, view) for view in views])
    return features, targets, run.labels(train).repeat(len(views))


def train_head(features: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, config, seed: int,
               on_epoch=None):
    """Fit a DistillHead on cached tensors; returns the head and its per-epoch history."""
    head_config = HeadConfig.shaped(config, input_dim=features.shape[1], num_labels=teacher.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = DistillHead(head_config)
        history = fit_on_tensors(
            head,
            (features,),
            labels,
            lambda logits, index: distillation_loss(
                logits, teacher[index], labels[index], alpha=config.alpha, temperature=config.temperature
            ),
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            seed=seed,
            description="distill head",
            on_epoch=on_epoch,
        )
    return head, history


def train(run: RunFolder) -> dict:
    """Train the head on train-split features and teacher logits; save it to RUN/distill."""
    config = run.config.distill
    teacher, processor = load_teacher(str(run.require("teacher")), run.dataset.taxonomy.labels)
    vlm = TunedVLM(run.load_tuned_vlm)
    features = split_features(run, vlm)
    train_rows = distillation_set(run, vlm, teacher, processor)
    # Caching above is shared by every rank; the head itself trains in seconds, on rank 0.
    if not distributed.is_main():
        return finish_stage(run, "distill", {})
    tracker = EpochTracker(run.config.report_to, run.directory, "distill", dataclasses.asdict(config))
    head, history = train_head(*train_rows, config, run.config.seed, on_epoch=tracker.log)
    metrics = {"parameters": count_parameters(head), "train_rows": len(train_rows[0]),
               "history": history}
    with torch.no_grad():
        for split, values in features.items():
            metrics[f"{split}_accuracy"] = accuracy(head(values), run.labels(run.dataset.splits[split]))
    log.info("distill: head val accuracy %.3f", metrics.get("val_accuracy", float("nan")))
    tracker.finish(metrics)
    return finish_stage(run, "distill", metrics, save=head.save_pretrained)
