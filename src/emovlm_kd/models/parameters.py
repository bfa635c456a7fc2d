"""Parameter counts of modules: the stages' metrics, the benchmark and the efficiency tables."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of `module` (on any device, the meta device included); with `trainable_only`,
    those that require gradients."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad or not trainable_only)
