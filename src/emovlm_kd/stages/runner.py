"""Run the stages of a config in order, resuming: a finished stage is not redone unless asked."""

from __future__ import annotations

import logging
from pathlib import Path

from emovlm_kd import distributed
from emovlm_kd.config import RunConfig
from emovlm_kd.errors import UserError
from emovlm_kd.io import remove_stale_temporaries
from emovlm_kd.run_folder import RunFolder, seed_everything
from emovlm_kd.stages.registry import STAGE_NAMES, STAGES

log = logging.getLogger("emovlm_kd")


def _attach_log_file(directory: Path) -> logging.Handler:
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / "logs" / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("emovlm_kd").addHandler(handler)
    return handler


def train(
    config: RunConfig,
    out: str | Path,
    stages: tuple[str, ...] = STAGE_NAMES,
    force: bool = False,
) -> RunFolder:
    """Run `stages` into the run folder `out` (and any finished stage downstream of one that
    reran); returns the run.

    With `force`, the chosen stages are redone (and the config may differ from the saved one).
    """
    unknown = [stage for stage in stages if stage not in STAGE_NAMES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGE_NAMES)}.", exit_code=2)
    out = Path(out)
    if force and (out / "config.yaml").exists():
        distributed.barrier()  # every rank has seen the old config before it goes
        if distributed.is_main():
            (out / "config.yaml").unlink()
        distributed.barrier()  # and no rank reads it while it goes
    run = RunFolder.create(config, out)
    if "instruct" in stages and (force or not run.is_done("instruct")):
        from emovlm_kd.stages.instruct import annotations_file

        annotations_file(config.instruct)  # refuses a silent classification-only run up front
    run.save_labels()
    handler = _attach_log_file(out) if distributed.is_main() else logging.NullHandler()
    if distributed.is_main() and (removed := remove_stale_temporaries(out)):
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    try:
        rerun: set[str] = set()
        for entry in STAGES:
            stage = entry.name
            # A finished stage whose inputs were just remade is stale: it reruns too.
            upstream_rerun = any(dep in rerun for dep in entry.depends_on) and run.is_done(stage)
            wanted = stage in stages or upstream_rerun
            if not wanted:
                continue
            if run.is_done(stage) and not (force or upstream_rerun):
                log.info("%s: done already (%s), skipping", stage, run.stage_dir(stage))
                continue
            distributed.barrier()  # every rank has decided before rank 0 changes anything
            # Marks the stage unfinished before any of its files change.
            if distributed.is_main():
                (run.stage_dir(stage) / "metrics.json").unlink(missing_ok=True)
            seed_everything(config.seed)
            log.info("%s: starting", stage)
            entry.train_function()(run)
            rerun.add(stage)
        return run
    finally:
        logging.getLogger("emovlm_kd").removeHandler(handler)
        handler.close()
