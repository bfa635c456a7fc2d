"""The training stages: one table, and how every stage ends.

A stage is a function from a run's artifacts to new ones (`train(run) -> metrics`), with
its own config section. It is finished when its folder holds a metrics.json: the weights
are swapped in whole first, the metrics written last, so a crash leaves a stage unfinished,
never half-written. Stage modules are imported on first use: listing the stages (the
command line does) does not load transformers.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emovlm_kd import distributed
from emovlm_kd.config import RunConfig
from emovlm_kd.io import atomic_dir, write_json


@dataclass(frozen=True)
class Stage:
    name: str
    # The module under emovlm_kd.stages whose `train(run)` runs the stage.
    module: str
    # A stage reruns when one it reads from was rerun.
    depends_on: tuple[str, ...] = ()

    @property
    def config_class(self) -> type:
        """The class of the stage's RunConfig section (the section of the same name)."""
        return typing.get_type_hints(RunConfig)[self.name]

    def train_function(self) -> Callable:
        return importlib.import_module(f"emovlm_kd.stages.{self.module}").train


# In the order they run.
STAGES = (
    Stage("teacher", "teacher"),
    Stage("instruct", "instruct"),
    Stage("distill", "distill", depends_on=("teacher", "instruct")),
    Stage("gate", "gate", depends_on=("instruct", "distill")),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def _write_stage_folder(run, stage: str, save: Callable[[Path], None]) -> None:
    # `save(folder)` writes a new folder that then replaces the stage's whole: a crash while
    # saving leaves the old folder or none, never a mix.
    with atomic_dir(run.stage_dir(stage)) as folder:
        save(folder)


def save_stage(run, stage: str, save: Callable[[Path], None]) -> None:
    """Rank 0 writes the stage's folder through `save(folder)`, swapped in whole; then every
    rank waits for it, so none reads the folder half-written."""
    if distributed.is_main():
        _write_stage_folder(run, stage, save)
    distributed.barrier()


def finish_stage(run, stage: str, metrics: dict, save: Callable[[Path], None] | None = None) -> dict:
    """Rank 0 saves the stage through `save(folder)` (if given; the folder is swapped in
    whole), then marks it finished with its metrics.json; then every rank waits for it.

    Every rank calls it once, ranks that trained nothing with empty metrics and no `save`:
    one barrier each, whatever the rank. Returns the metrics on rank 0, {} elsewhere.
    """
    if distributed.is_main():
        if save is not None:
            _write_stage_folder(run, stage, save)
        write_json(run.stage_dir(stage) / "metrics.json", metrics)
    distributed.barrier()
    return metrics if distributed.is_main() else {}
