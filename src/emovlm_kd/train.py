"""Run the stages of a config in order, resuming: a finished stage is not redone unless asked."""

from __future__ import annotations

import logging
from pathlib import Path

from emovlm_kd import distributed
from emovlm_kd.analysis.evaluation import evaluate_run
from emovlm_kd.config import STAGES, RunConfig
from emovlm_kd.errors import UserError
from emovlm_kd.io import remove_stale_temporaries, write_json
from emovlm_kd.run import Run, seed_everything

log = logging.getLogger("emovlm_kd")

# A stage reruns when one it reads from was rerun.
DEPENDS_ON = {"teacher": (), "instruct": (), "distill": ("teacher", "instruct"), "gate": ("instruct", "distill")}


def _stage_function(stage: str):
    from emovlm_kd.stages.distill import train_distill
    from emovlm_kd.stages.gate import train_gate
    from emovlm_kd.stages.instruct import train_instruct
    from emovlm_kd.stages.teacher import train_teacher

    return {"teacher": train_teacher, "instruct": train_instruct, "distill": train_distill, "gate": train_gate}[stage]


def _attach_log_file(directory: Path) -> logging.Handler:
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / "logs" / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("emovlm_kd").addHandler(handler)
    return handler


def train(
    config: RunConfig,
    out: str | Path,
    stages: tuple[str, ...] = STAGES,
    force: bool = False,
    evaluate: bool = True,
) -> tuple[Run, dict | None]:
    """Run `stages` into the run folder `out`; returns the run and its test metrics (if evaluated;
    on rank 0 only under a launcher).

    With `force`, the chosen stages are redone (and the config may differ from the saved one).
    """
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}.", exit_code=2)
    out = Path(out)
    if force and (out / "config.yaml").exists():
        distributed.barrier()  # every rank has seen the old config before it goes
        if distributed.is_main():
            (out / "config.yaml").unlink()
        distributed.barrier()  # and no rank reads it while it goes
    run = Run.create(config, out)
    if "instruct" in stages and (force or not run.is_done("instruct")):
        from emovlm_kd.stages.instruct import annotations_file

        annotations_file(config.instruct)  # refuses a silent classification-only run up front
    run.save_labels()
    handler = _attach_log_file(out) if distributed.is_main() else logging.NullHandler()
    if distributed.is_main() and (removed := remove_stale_temporaries(out)):
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    try:
        rerun: set[str] = set()
        for stage in STAGES:
            # A finished stage whose inputs were just remade is stale: it reruns too.
            upstream_rerun = any(dep in rerun for dep in DEPENDS_ON[stage]) and run.is_done(stage)
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
            _stage_function(stage)(run)
            rerun.add(stage)
        metrics = None
        if evaluate and all(run.is_done(stage) for stage in STAGES) and run.dataset.splits.get("test"):
            metrics = evaluate_run(run, "test")  # on every rank: it fills shared caches
            if distributed.is_main():
                write_json(out / "metrics.json", metrics)
            else:
                metrics = None
        return run, metrics
    finally:
        logging.getLogger("emovlm_kd").removeHandler(handler)
        handler.close()
