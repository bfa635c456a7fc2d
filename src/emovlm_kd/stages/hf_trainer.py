"""Settings shared by the stages that train with the Hugging Face Trainer (teacher, instruct)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments


def training_arguments(output_dir: Path, *, seed: int, bf16: bool = False, **settings) -> TrainingArguments:
    """TrainingArguments with our conventions: no pickled checkpoints (a stage resumes whole),
    seeded data order, and the Trainer's accelerate integration for DDP/FSDP/DeepSpeed."""
    return TrainingArguments(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        logging_steps=settings.pop("logging_steps", 10),
        remove_unused_columns=False,
        # Under DDP every trainable weight takes part in each step (the frozen vision
        # tower has no gradients at all), so the extra graph walk is not needed.
        ddp_find_unused_parameters=False,
        dataloader_num_workers=settings.pop("dataloader_num_workers", 0),
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        **settings,
    )
