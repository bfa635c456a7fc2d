"""The distilled head: a small MLP on the VLM's mean-pooled visual tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emovlm_kd.models.saving import SavableModule

# Hidden widths by depth, as in the paper: depth 1 is one hidden layer of 1024 (the best).
HIDDEN_WIDTHS = (1024, 512, 256, 128, 64)


@dataclass
class HeadConfig:
    input_dim: int
    num_labels: int
    depth: int = 1
    dropout: float = 0.1

    def __post_init__(self):
        if not 1 <= self.depth <= len(HIDDEN_WIDTHS):
            raise ValueError(f"head depth must be between 1 and {len(HIDDEN_WIDTHS)}, got {self.depth}")


class DistillHead(SavableModule):
    """Linear(D->1024) GELU Dropout [-> 512 -> 256 -> 128 -> 64 for larger depth] -> Linear(->K)."""

    config_class = HeadConfig

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.input_dim
        for hidden in HIDDEN_WIDTHS[: config.depth]:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.num_labels))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled_visual: torch.Tensor) -> torch.Tensor:
        # [B, D] -> [B, K] logits
        return self.layers(pooled_visual)
