"""Teacher stage: fine-tune an image classifier with cross-entropy (the paper's ViT-B/16)."""

from __future__ import annotations

import logging
import random

import torch
from transformers import Trainer

from emovlm_kd.augment import train_augment
from emovlm_kd.models.teacher import (
    load_teacher,
    save_teacher,
    teacher_image_size,
)
from emovlm_kd.run_folder import RunFolder, load_rgb
from emovlm_kd.stages.caches import teacher_logits
from emovlm_kd.stages.hf_trainer import training_arguments
from emovlm_kd.stages.registry import finish_stage, save_stage
from emovlm_kd.stages.tensor_training import accuracy
from emovlm_kd.tracking import trainer_tracking

log = logging.getLogger("emovlm_kd")


def train(run: RunFolder) -> dict:
    """Fine-tune the teacher on train; save it to RUN/teacher; report val and test accuracy."""
    config = run.config.teacher
    taxonomy = run.dataset.taxonomy
    name = config.model or run.preset.teacher
    model, processor = load_teacher(name, taxonomy.labels, seed=run.config.seed)
    size = teacher_image_size(processor)
    train = run.dataset.split("train")
    # Its own seeded generator: augmentations depend on the seed and data order only.
    rng = random.Random(run.config.seed)

    def collate(batch):
        images = [train_augment(load_rgb(sample.path), size, rng, config.crop_scale_min) for sample in batch]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": run.labels(batch)}

    stage_dir = run.stage_dir("teacher")
    report_to, callbacks = trainer_tracking(run.config.report_to, run.directory, "teacher")
    args = training_arguments(
        stage_dir / "trainer",
        seed=run.config.seed,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        report_to=report_to,
    )
    # Adam with L2 weight decay, as in the paper (the Trainer's default would be AdamW).
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate, optimizers=(optimizer, None),
                      callbacks=callbacks)
    log.info("teacher: fine-tuning %s on %d images for %s epochs", name, len(train), config.epochs)
    trainer.train()
    model.eval()
    # Saved before the logits below: their cache is keyed by the saved weights.
    save_stage(run, "teacher", lambda folder: save_teacher(model, processor, folder))

    metrics = {"model": name, "image_size": size, "train_images": len(train)}
    for split in ("val", "test"):
        samples = run.dataset.splits.get(split) or []
        if samples:
            logits = teacher_logits(run, model, processor, samples)
            metrics[f"{split}_accuracy"] = accuracy(logits, run.labels(samples))
    metrics["log_history"] = trainer.state.log_history
    return finish_stage(run, "teacher", metrics)
