"""Experiment tracking for every stage (`report_to`): TensorBoard, Weights & Biases or MLflow.

The Trainer stages (teacher, instruct) log through the Trainer's own integrations; the
stages that train on cached tensors (distill, gate) through accelerate's trackers, one
record per epoch. TensorBoard event files go to RUN/logs/tensorboard/<stage>, outside the
stage folders, which are replaced whole when a stage saves. Only the main process logs.
"""

from __future__ import annotations

from pathlib import Path

from emovlm_kd import distributed
from emovlm_kd.errors import UserError

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")


def check_tracker(report_to: str) -> str:
    if report_to not in TRACKERS:
        raise UserError(f"report_to={report_to!r} is not a tracker; use one of: {', '.join(TRACKERS)}.")
    return report_to


def tensorboard_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "logs" / "tensorboard" / stage


def _needs(package: str, module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"report_to needs the {package} package; install it (pip install {package}) "
                        "or set report_to=none.")


def trainer_tracking(report_to: str, run_dir: Path, stage: str) -> tuple[str, list]:
    """(the Trainer's report_to, its extra callbacks) for `report_to`."""
    if check_tracker(report_to) != "tensorboard":
        if report_to != "none":
            _needs(report_to, report_to)
        return report_to, []
    _needs("tensorboard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    writer = SummaryWriter(str(tensorboard_dir(run_dir, stage))) if distributed.is_main() else None
    return "none", [TensorBoardCallback(tb_writer=writer)] if writer is not None else []


class EpochTracker:
    """Per-epoch records of a stage that trains on tensors, sent to the chosen tracker."""

    def __init__(self, report_to: str, run_dir: Path, stage: str, config: dict):
        self.tracker = None
        if check_tracker(report_to) == "none" or not distributed.is_main():
            return
        _needs(report_to, report_to)
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        if report_to == "tensorboard":
            self.tracker = TensorBoardTracker(stage, tensorboard_dir(run_dir, stage).parent)
        elif report_to == "wandb":
            self.tracker = WandBTracker(stage)
        else:
            self.tracker = MLflowTracker(experiment_name=stage)
        self.tracker.start()
        self.tracker.store_init_configuration(config)

    def log(self, record: dict) -> None:
        """`record`: {"epoch": n, metric: value, ...} of one epoch."""
        if self.tracker is not None:
            values = {key: value for key, value in record.items() if key != "epoch"}
            self.tracker.log(values, step=record["epoch"])

    def finish(self, summary: dict) -> None:
        """Log the stage's final figures (accuracy per split) and close the tracker."""
        if self.tracker is not None:
            self.tracker.log({f"final/{key}": value for key, value in summary.items() if isinstance(value, float)})
            self.tracker.finish()
