"""A run: its resolved config, its folder of artifacts, its dataset and its caches."""

from __future__ import annotations

import functools
import json
import logging
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emovlm_kd import distributed
from emovlm_kd.config import RunConfig, load_config
from emovlm_kd.data.datasets import Dataset, Sample, load_dataset
from emovlm_kd.errors import UserError
from emovlm_kd.images import file_sha256, load_image
from emovlm_kd.io import atomic_write_text, read_json, write_json
from emovlm_kd.labels import Taxonomy
from emovlm_kd.models.registry import ModelPreset, resolve_vlm
from emovlm_kd.models.tokenizers import cache_home
from emovlm_kd.models.tuned import load_tuned_vlm, tuned_loading

CONFIG_FILE = "config.yaml"
# The run's labels, in order, written at training time: prediction and serving need no dataset.
LABELS_FILE = "labels.json"
# Qwen2-VL's image processor needs at least 28 px (one merged patch) on each side.
MIN_IMAGE_SIDE = 28
# ... and refuses images whose longer side is 200 or more times the shorter one.
MAX_ASPECT_RATIO = 200

log = logging.getLogger("emovlm_kd")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunFolder:
    config: RunConfig
    directory: Path

    @classmethod
    def create(cls, config: RunConfig, directory: str | Path) -> RunFolder:
        """A run folder holding `config`; an existing run must have been made with the same config."""
        directory = Path(directory)
        saved = directory / CONFIG_FILE
        if saved.exists():
            previous = load_config(saved)
            if previous.to_dict() != config.to_dict():
                changed = _changed_keys(previous.to_dict(), config.to_dict())
                if _holds_stage_work(directory):
                    raise UserError(
                        f"{directory} was trained with a different config ({', '.join(changed)} changed); "
                        "use a new --out folder, or pass --force to retrain it with the new settings."
                    )
                # A command that stopped before any stage (a wrong data path, say): nothing was
                # trained with the old config, so the corrected command simply starts the run.
                log.info("%s: no stage ran with its earlier config (%s differed); it takes this one", directory,
                         ", ".join(changed))
        distributed.barrier()  # every rank has compared before rank 0 writes
        if distributed.is_main():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, config.to_yaml())
        distributed.barrier()
        return cls(config, directory)

    @classmethod
    def open(cls, directory: str | Path) -> RunFolder:
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise UserError(
                f"{directory} is not a run folder (no {CONFIG_FILE}); train one with "
                "`emovlm-kd train` or `emovlm-kd demo`."
            )
        return cls(load_config(directory / CONFIG_FILE), directory)

    def stage_dir(self, stage: str) -> Path:
        return self.directory / stage

    def stage_problem(self, stage: str) -> str | None:
        """Why `stage` cannot be used ("has not finished", a damaged file, ...), or None.

        A stage's weights are swapped in whole and its metrics.json is written last, so a
        crash leaves no metrics.json. Beyond that, the weights must be complete safetensors
        (never pickles) and no config may ask for custom code.
        """
        folder = self.stage_dir(stage)
        try:
            metrics = read_json(folder / "metrics.json")
        except FileNotFoundError:
            return "has not finished"
        except (OSError, ValueError):
            return "has a damaged metrics.json"
        if not isinstance(metrics, dict):
            return "has a damaged metrics.json"
        weights = _stage_weights(stage, folder)
        if not weights:
            return "has no weights (model.safetensors)"
        for path in weights:
            if not _safetensors_complete(path):
                return f"has a damaged or incomplete {path.relative_to(folder)}"
        for path in sorted(folder.glob("**/*config*.json")):
            try:
                declares_code = "auto_map" in read_json(path)
            except (OSError, ValueError, TypeError):
                return f"has a damaged {path.relative_to(folder)}"
            if declares_code:
                return (
                    f"has {path.relative_to(folder)} asking to run custom code (auto_map), which emovlm-kd "
                    "never writes, so it was not made by this training"
                )
        return None

    def is_done(self, stage: str) -> bool:
        return self.stage_problem(stage) is None

    def stage_metrics(self, stage: str) -> dict:
        return read_json(self.stage_dir(stage) / "metrics.json")

    def require(self, *stages: str) -> Path:
        """The folder of the last of `stages`, each of which must be finished (else one sentence)."""
        for stage in stages:
            problem = self.stage_problem(stage)
            if problem is not None:
                raise UserError(
                    f"the {stage} stage of {self.directory} {problem}; run `emovlm-kd train --config "
                    f"{self.directory / CONFIG_FILE} --out {self.directory} --stage {stage}`."
                )
        return self.stage_dir(stages[-1])

    def tuned_loading(self) -> dict[str, bool]:
        """How the run's tuned VLM loads (4-bit base and unmerged adapter after QLoRA)."""
        return tuned_loading(self._tuning_method())

    def load_tuned_vlm(self, dtype: torch.dtype | None = None):
        """The run's instruction-tuned VLM, loaded as it was tuned (in `dtype` where given)."""
        return load_tuned_vlm(self.preset, self.require("instruct"), self._tuning_method(), self.config.seed, dtype)

    def _tuning_method(self) -> str | None:
        return self.stage_metrics("instruct").get("method")

    def check_head_width(self, head, width: int) -> None:
        """One sentence where the run's head reads features of another width than `width`, the
        one its VLM pools now (a LLaVA run from before the head read the tower's own tokens)."""
        if head.config.input_dim != width:
            raise UserError(
                f"the head of {self.directory} reads {head.config.input_dim}-wide visual features, but its VLM "
                f"pools {width}-wide ones for the head; retrain the head and gate with `emovlm-kd train "
                f"--config {self.directory / CONFIG_FILE} --out {self.directory} --stage distill --force`."
            )

    @functools.cached_property
    def preset(self) -> ModelPreset:
        return resolve_vlm(self.config.preset)

    def save_labels(self) -> None:
        """Record the taxonomy the run is trained on (rank 0 writes)."""
        if distributed.is_main():
            taxonomy = self.dataset.taxonomy
            write_json(self.directory / LABELS_FILE, {"name": taxonomy.name, "labels": list(taxonomy.labels)})

    @functools.cached_property
    def taxonomy(self) -> Taxonomy:
        """The labels the run was trained on: from labels.json, or (older runs) from its dataset."""
        try:
            saved = read_json(self.directory / LABELS_FILE)
            return Taxonomy(str(saved["name"]), tuple(str(label) for label in saved["labels"]))
        except FileNotFoundError:
            return self.dataset.taxonomy
        except (OSError, ValueError, TypeError, KeyError):
            raise UserError(f"{self.directory / LABELS_FILE} is damaged; rerun `emovlm-kd train` on the run "
                            "to write it again.") from None

    @functools.cached_property
    def dataset(self) -> Dataset:
        data = self.config.data
        dataset = load_dataset(
            data.root,
            taxonomy=data.taxonomy,
            preset=data.dataset,
            strict=data.strict,
            seed=data.split_seed,
            val_fraction=data.val_fraction,
            image_column=data.image_column,
            label_column=data.label_column,
        )
        for problem in dataset.problems:
            log.warning("data: %s", problem)
        return dataset

    @property
    def cache_root(self) -> Path:
        return Path(self.config.cache_dir) if self.config.cache_dir else cache_home() / "cache"

    @functools.cached_property
    def _hashes(self) -> dict[Path, str]:
        return {}

    def image_keys(self, samples: list[Sample]) -> list[str]:
        """Content hashes of the samples' images (the cache keys)."""
        for sample in samples:
            if sample.path not in self._hashes:
                self._hashes[sample.path] = file_sha256(sample.path)
        return [self._hashes[sample.path] for sample in samples]

    def labels(self, samples: list[Sample]) -> torch.Tensor:
        return torch.tensor([self.dataset.label_index(sample) for sample in samples])


def load_rgb(path) -> "Image.Image":  # noqa: F821 - PIL type for readers
    return load_image(path, min_side=MIN_IMAGE_SIDE, max_aspect_ratio=MAX_ASPECT_RATIO)


def _stage_weights(stage: str, folder: Path) -> list[Path]:
    """The safetensors files a finished stage must hold."""
    if stage == "instruct":
        # LoRA adapter, or the full model (sharded models list their shards in an index).
        if (folder / "adapter").is_dir():
            return [folder / "adapter" / "adapter_model.safetensors"]
        index = folder / "model" / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(read_json(index)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return [index]
            return [folder / "model" / name for name in shards]
        return [folder / "model" / "model.safetensors"] if (folder / "model").is_dir() else []
    return [folder / "model.safetensors"]


def _safetensors_complete(path: Path) -> bool:
    """True when `path` holds a whole safetensors file (a header whose tensors fill the file)."""
    if not path.is_file():  # missing, or a pipe or device that would never end
        return False
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                return False
            header = json.loads(handle.read(header_size))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
        return False
    return 8 + header_size + max(ends, default=0) == size


def _holds_stage_work(directory: Path) -> bool:
    """Whether a stage has started in the run folder: a folder beside the files that `train`
    writes before any stage (config.yaml, labels.json, logs/)."""
    return any(path.is_dir() and path.name != "logs" for path in directory.iterdir())


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed
