"""The distilled head: a small MLP on the VLM's mean-pooled visual tokens."""

from __future__ import annotations

import torch
from torch import nn

from emovlm_kd.models.configs import HIDDEN_WIDTHS, HeadConfig
from emovlm_kd.models.saving import SavableModule


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
