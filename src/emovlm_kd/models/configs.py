"""The configs of the trainable parts (head, gate) and of the distillation objective, with
the paper's values as defaults, stated here once.

The run config's stage sections are these (a `distill:` section is a HeadSettings and a
DistillationSettings with training settings added), so a setting is read by the module it
sets. Torch-free: the command line reads them without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Hidden widths by depth, as in the paper: depth 1 is one hidden layer of 1024 (the best).
HIDDEN_WIDTHS = (1024, 512, 256, 128, 64)
GATE_VARIANTS = ("concat_linear", "bilinear", "mixture", "dynamic", "cross")
# How sure both experts must be of one label for the gate to keep it.
KEEP_AGREEMENT = 0.8


def settings_of(settings_class: type, config) -> dict:
    """The `settings_class` fields of `config` (a config that is one, among other things)."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(settings_class)}


@dataclass(kw_only=True)
class HeadSettings:
    depth: int = 1
    dropout: float = 0.1


@dataclass(kw_only=True)
class HeadConfig(HeadSettings):
    # From the data: the pooled visual width D and the number of labels K.
    input_dim: int
    num_labels: int

    def __post_init__(self):
        if not 1 <= self.depth <= len(HIDDEN_WIDTHS):
            raise ValueError(f"head depth must be between 1 and {len(HIDDEN_WIDTHS)}, got {self.depth}")

    @classmethod
    def shaped(cls, settings: HeadSettings, input_dim: int, num_labels: int) -> HeadConfig:
        return cls(input_dim=input_dim, num_labels=num_labels, **settings_of(HeadSettings, settings))


@dataclass(kw_only=True)
class DistillationSettings:
    # alpha weighs the teacher's soft labels against the hard labels; T softens both sides.
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass(kw_only=True)
class GateSettings:
    variant: str = "concat_linear"
    # Where head and VLM both put at least this on one label, the fused output is their
    # product, whatever the gate learnt; None turns it off.
    keep_agreement: float | None = KEEP_AGREEMENT


@dataclass(kw_only=True)
class GateConfig(GateSettings):
    num_labels: int
    num_experts: int = 3

    def __post_init__(self):
        if self.variant not in GATE_VARIANTS:
            raise ValueError(f"unknown gate variant {self.variant!r}; choose one of: {', '.join(GATE_VARIANTS)}")
        if self.keep_agreement is not None and not 0.5 < self.keep_agreement <= 1:
            raise ValueError(f"gate keep_agreement={self.keep_agreement} must lie in (0.5, 1], or be None to turn it off")

    @classmethod
    def shaped(cls, settings: GateSettings, num_labels: int) -> GateConfig:
        return cls(num_labels=num_labels, **settings_of(GateSettings, settings))
