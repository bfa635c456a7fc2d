"""save_pretrained / from_pretrained for our small modules: config.json + model.safetensors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from emovlm_kd.errors import UserError
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
        """Load a module saved by `save_pretrained`; a folder that does not hold one (damaged,
        edited, another module) raises a UserError before any weight is allocated."""
        directory = Path(directory)
        try:
            config = cls._read_config(directory)
        except Exception as error:  # whatever the files hold, it ends in one sentence
            raise UserError(
                f"{directory} does not hold a usable {cls.__name__} ({error}); train its stage again."
            ) from None
        module = cls(config)
        module.load_state_dict(load_file(str(directory / "model.safetensors")))
        # load_state_dict copies into the module's own tensors, on the CPU: then it moves.
        return module.to(device).eval()

    @classmethod
    def _read_config(cls, directory: Path):
        saved = json.loads((directory / "config.json").read_text())
        if not isinstance(saved, dict):
            raise TypeError("config.json is not a JSON object")
        saved_class = saved.pop("class", cls.__name__)
        if saved_class != cls.__name__:
            raise ValueError(f"it holds a {saved_class}")
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(map(str, set(saved) - fields))
        if unknown:
            raise ValueError(f"config.json has unknown keys: {', '.join(unknown)}")
        config = cls.config_class(**saved)
        # Built on the meta device (no memory): the weights must be the ones this config makes.
        with torch.device("meta"):
            expected = {name: tuple(t.shape) for name, t in cls(config).state_dict().items()}
        with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        if stored != expected:
            raise ValueError("model.safetensors does not match config.json")
        return config
