"""The gate that fuses the head's prediction with the VLM's.

Five variants from the paper, chosen by name; `concat_linear` was the best there.
Every variant maps (head logits [B, K], VLM label log-probabilities [B, K]) to fused
logits [B, K]. Both inputs are first put on one scale, log-probabilities (a log-softmax
over the K labels), so neither input dominates by its range alone.

Every variant starts as the product of the two experts: its untrained output is
log p_head + log p_vlm (up to a constant per image), a sensible fusion before any training,
and one that keeps a label both experts agree on. Training then learns where to move from it.

Where both experts put at least `keep_agreement` (0.8) on the same label, the fused output
is their product whatever the trained weights say: a gate fitted on a few hundred held-out
images must not overrule two confident experts that agree. It learns on the rest.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emovlm_kd.models.configs import GateConfig
from emovlm_kd.models.saving import SavableModule


def sure_agreement(head: torch.Tensor, vlm: torch.Tensor, confidence: float) -> torch.Tensor:
    """[B] True where two log-probability rows [B, K] put >= `confidence` on the same label."""
    floor = math.log(confidence)
    (head_top, head_label), (vlm_top, vlm_label) = head.max(-1), vlm.max(-1)
    return (head_label == vlm_label) & (head_top >= floor) & (vlm_top >= floor)


def _product_of_experts(k: int) -> nn.Linear:
    # Linear(2K -> K) with weight [I | I] and no bias: log p_head + log p_vlm.
    layer = nn.Linear(2 * k, k)
    with torch.no_grad():
        layer.weight.copy_(torch.cat([torch.eye(k), torch.eye(k)], dim=1))
        layer.bias.zero_()
    return layer


def _zeros(layer: nn.Module) -> nn.Module:
    # A layer whose first output is 0 whatever its input: a neutral start for a correction.
    for parameter in layer.parameters():
        nn.init.zeros_(parameter)
    return layer


class Gate(SavableModule):
    config_class = GateConfig

    def __init__(self, config: GateConfig):
        super().__init__()
        self.config = config
        k = config.num_labels
        if config.variant == "concat_linear":
            self.fuse = _product_of_experts(k)
        elif config.variant == "bilinear":
            # Bilinear interactions on top of the linear terms; the interactions start at 0.
            self.interact = _zeros(nn.Bilinear(k, k, k))
            self.fuse = _product_of_experts(k)
        elif config.variant == "mixture":
            self.experts = nn.ModuleList(_product_of_experts(k) for _ in range(config.num_experts))
            self.router = _zeros(nn.Linear(2 * k, config.num_experts))
        elif config.variant == "dynamic":
            self.router = _zeros(nn.Linear(2 * k, 2))
        elif config.variant == "cross":
            self.gate_head = _zeros(nn.Linear(k, k))
            self.gate_vlm = _zeros(nn.Linear(k, k))
            self.fuse = _product_of_experts(k)

    def forward(self, head_logits: torch.Tensor, vlm_logprobs: torch.Tensor) -> torch.Tensor:
        head = head_logits.log_softmax(-1)  # [B, K] log-probabilities
        vlm = vlm_logprobs.log_softmax(-1)  # [B, K]; a no-op on normalised log-probabilities
        fused = self.fuse_variant(head, vlm)
        if self.config.keep_agreement is None:
            return fused
        agree = sure_agreement(head, vlm, self.config.keep_agreement)  # [B]
        return torch.where(agree[:, None], head + vlm, fused)

    def fuse_variant(self, head: torch.Tensor, vlm: torch.Tensor) -> torch.Tensor:
        """The variant's fused logits [B, K] from the two log-probabilities [B, K]."""
        both = torch.cat([head, vlm], dim=-1)  # [B, 2K]
        variant = self.config.variant
        if variant == "concat_linear":
            return self.fuse(both)
        if variant == "bilinear":
            return self.fuse(both) + self.interact(head.exp(), vlm.exp())
        if variant == "mixture":
            weights = self.router(both).softmax(-1)  # [B, E]
            experts = torch.stack([expert(both) for expert in self.experts], dim=1)  # [B, E, K]
            return (weights[..., None] * experts).sum(1)
        if variant == "dynamic":
            # Per-image weights of the two log-probabilities; 1 and 1 at the start.
            weights = 2 * self.router(both).softmax(-1)  # [B, 2]
            return weights[:, :1] * head + weights[:, 1:] * vlm
        # cross: each input decides, through a sigmoid, how much of the other passes (all at the start).
        head_gated = head * 2 * torch.sigmoid(self.gate_head(vlm.exp()))
        vlm_gated = vlm * 2 * torch.sigmoid(self.gate_vlm(head.exp()))
        return self.fuse(torch.cat([head_gated, vlm_gated], dim=-1))
