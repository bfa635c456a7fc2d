"""Datasets: presets for the published emotion datasets, the loader, and the checker."""

from emovlm_kd.data.datasets import (
    DATASET_PRESETS,
    SPLITS,
    Dataset,
    DatasetPreset,
    Sample,
    get_dataset_preset,
    load_dataset,
)

__all__ = [
    "DATASET_PRESETS",
    "SPLITS",
    "Dataset",
    "DatasetPreset",
    "Sample",
    "get_dataset_preset",
    "load_dataset",
]
