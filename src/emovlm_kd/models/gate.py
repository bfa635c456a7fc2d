"""The gate that fuses the head's logits with the VLM's class probabilities.

Five variants from the paper, chosen by name; `concat_linear` was the best there.
Every variant maps (head_logits [B, K], vlm_probs [B, K]) to fused logits [B, K].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emovlm_kd.models.saving import SavableModule

GATE_VARIANTS = ("concat_linear", "bilinear", "mixture", "dynamic", "cross")


@dataclass
class GateConfig:
    num_labels: int
    variant: str = "concat_linear"
    num_experts: int = 3

    def __post_init__(self):
        if self.variant not in GATE_VARIANTS:
            raise ValueError(f"unknown gate variant {self.variant!r}; choose one of: {', '.join(GATE_VARIANTS)}")


class Gate(SavableModule):
    config_class = GateConfig

    def __init__(self, config: GateConfig):
        super().__init__()
        self.config = config
        k = config.num_labels
        if config.variant == "concat_linear":
            self.fuse = nn.Linear(2 * k, k)
        elif config.variant == "bilinear":
            self.fuse = nn.Bilinear(k, k, k)
        elif config.variant == "mixture":
            self.experts = nn.ModuleList(nn.Linear(2 * k, k) for _ in range(config.num_experts))
            self.router = nn.Linear(2 * k, config.num_experts)
        elif config.variant == "dynamic":
            self.router = nn.Linear(2 * k, 2)
        elif config.variant == "cross":
            self.gate_head = nn.Linear(k, k)
            self.gate_vlm = nn.Linear(k, k)
            self.fuse = nn.Linear(2 * k, k)

    def forward(self, head_logits: torch.Tensor, vlm_probs: torch.Tensor) -> torch.Tensor:
        both = torch.cat([head_logits, vlm_probs], dim=-1)  # [B, 2K]
        variant = self.config.variant
        if variant == "concat_linear":
            return self.fuse(both)
        if variant == "bilinear":
            return self.fuse(head_logits, vlm_probs)
        if variant == "mixture":
            weights = self.router(both).softmax(-1)  # [B, E]
            experts = torch.stack([expert(both) for expert in self.experts], dim=1)  # [B, E, K]
            return (weights[..., None] * experts).sum(1)
        if variant == "dynamic":
            # Mix the two distributions with per-image weights; log keeps it a logit vector.
            weights = self.router(both).softmax(-1)  # [B, 2]
            mixed = weights[:, :1] * head_logits.softmax(-1) + weights[:, 1:] * vlm_probs
            return mixed.clamp_min(1e-8).log()
        # cross: each input decides, through a sigmoid, how much of the other passes.
        head_gated = head_logits * torch.sigmoid(self.gate_head(vlm_probs))
        vlm_gated = vlm_probs * torch.sigmoid(self.gate_vlm(head_logits))
        return self.fuse(torch.cat([head_gated, vlm_gated], dim=-1))
