"""save_pretrained / from_pretrained for our small modules: config.json + model.safetensors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from emovlm_kd.io import atomic_path, atomic_write_text


class SavableModule(nn.Module):
    """An nn.Module built from a dataclass config, saved without pickle."""

    config_class: type

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        config = {"class": type(self).__name__, **dataclasses.asdict(self.config)}
        atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"):
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        saved_class = config.pop("class", cls.__name__)
        if saved_class != cls.__name__:
            raise ValueError(f"{directory} holds a {saved_class}, not a {cls.__name__}")
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"{directory}/config.json has unknown keys: {', '.join(unknown)}")
        module = cls(cls.config_class(**config))
        module.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(device)))
        return module.eval()
