"""Annotate every training image of a dataset, resumably, with retries, one record per line.

Worker threads send the requests; only the calling thread writes, so records are
serialised and a killed worker can never leave half a line. Each record is on disk
(fsync'd) as soon as it arrives, a rerun skips the images already in the file, and
images that still fail after their retries are reported, not written, so the next run
tries them again. With `retry_flagged` the images whose records are flagged are asked
again too; their new records replace the old ones when the run ends.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from emovlm_kd.annotate.backends import (
    RequestFailed,
    TransientError,
    fit_image,
    make_backend,
)
from emovlm_kd.annotate.config import AnnotateConfig
from emovlm_kd.annotate.parsing import parse_answer, parse_structured
from emovlm_kd.annotate.prompts import annotation_prompt
from emovlm_kd.annotate.records import AnnotationFile, newest_records, record_flags, run_settings_path
from emovlm_kd.data.annotations import annotation_flags
from emovlm_kd.data.datasets import Sample, load_dataset
from emovlm_kd.errors import UserError
from emovlm_kd.images import ImageError, load_image
from emovlm_kd.io import write_json
from emovlm_kd.labels import Taxonomy

log = logging.getLogger("emovlm_kd")

TRUNCATED_FLAG = "answer cut at max_tokens"


@dataclass(frozen=True)
class Failure:
    image: str
    reason: str


@dataclass
class AnnotateReport:
    """What one run did; `failures` and `not_attempted` are left for the next run."""

    out: Path
    images: int = 0
    already_done: int = 0
    written: int = 0
    flagged: int = 0
    # Images asked again because their record was flagged (`retry_flagged`).
    retried: int = 0
    # "structured" (JSON fitting the schema) or "parsed" (from text) -> records written.
    modes: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    not_attempted: int = 0

    @property
    def complete(self) -> bool:
        return not self.failures and not self.not_attempted


class _Stopped(Exception):
    """The run is ending (Ctrl-C or giving up); a worker drops its image unwritten."""


def image_key(path: Path, base: Path) -> str:
    """How a record names its image: relative to the dataset folder (portable), else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def backoff_delay(
    attempt: int, config: AnnotateConfig, rng: random.Random, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry `attempt + 1`: exponential, capped, jittered.

    The jitter draws from [half, all] of the exponential delay, so clients that failed
    together spread out yet none retries at once; a server's Retry-After is honoured up
    to `retry_max_delay`.
    """
    ceiling = min(config.retry_max_delay, config.retry_base_delay * 2 ** min(attempt, 32))
    delay = ceiling * (0.5 + 0.5 * rng.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.retry_max_delay))
    return delay


def annotate_dataset(config: AnnotateConfig, backend=None) -> AnnotateReport:
    """Append a record for each training image of `config.data` not yet in `config.out`.

    With `config.retry_flagged`, also for each whose record is flagged, then keep only
    the newest record of each image. `backend` defaults to the one the config names (an
    object with `describe`, `model` and `max_workers`; see `emovlm_kd.annotate.backends`).
    """
    config.validate()
    # First, so that a missing key or an unknown model is said before the dataset is scanned.
    backend = backend or make_backend(config)
    dataset = load_dataset(config.data, taxonomy=config.taxonomy, image_column=config.image_column,
                           label_column=config.label_column)
    if dataset.unreadable:
        log.warning(
            "annotate: skipping %d unreadable image(s); `emovlm-kd data check` names them", len(dataset.unreadable)
        )
    train = dataset.split("train")[: config.limit]
    base = dataset.root.parent if dataset.root.is_file() else dataset.root
    out_path = Path(config.out)
    report = AnnotateReport(out_path, images=len(train))
    with AnnotationFile(out_path) as out:
        flagged = _flagged_images(out.records, dataset.taxonomy) if config.retry_flagged else set()
        todo = [
            (sample, key) for sample in train
            if (key := image_key(sample.path, base)) not in out.done or key in flagged
        ]
        report.already_done = len(train) - len(todo)
        report.retried = sum(key in flagged for _, key in todo)
        log.info(
            "annotate: %d training images, %d already in %s, %d to do%s",
            len(train), report.already_done, out_path, len(todo),
            f" ({report.retried} of them flagged)" if config.retry_flagged else "",
        )
        if todo:
            write_json(run_settings_path(out_path), {"annotate": config.to_dict(), "taxonomy": dataset.taxonomy.name})
            _run(todo, backend, dataset.taxonomy, config, out, report)
        if config.retry_flagged:
            out.keep_newest()
    return report


def _flagged_images(records: list[dict], taxonomy: Taxonomy) -> set[str]:
    # An image's newest record decides, so what a crashed retry already fixed is not asked again.
    return {image for image, record in newest_records(records).items() if record_flags(record, taxonomy)}


def _run(
    todo: list[tuple[Sample, str]], backend, taxonomy: Taxonomy, config: AnnotateConfig, out: AnnotationFile,
    report: AnnotateReport,
) -> None:
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for job in todo:
        jobs.put(job)
    outcomes: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                sample, key = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                outcomes.put(_annotate_one(sample, key, backend, taxonomy, config, stop))
            except _Stopped:
                return
            except (TransientError, RequestFailed, ImageError) as error:
                outcomes.put(Failure(key, str(error)))
            except UserError as error:
                outcomes.put(error)
            except Exception as error:  # one image's surprise must not cost the others
                log.debug("annotate: %s failed", key, exc_info=True)
                outcomes.put(Failure(key, f"{type(error).__name__}: {error}"))

    # Daemon threads: on Ctrl-C the process ends without waiting for answers in flight.
    workers = [
        threading.Thread(target=work, name=f"annotate-{i}", daemon=True)
        for i in range(min(backend.max_workers, len(todo)))
    ]
    for worker in workers:
        worker.start()
    received, failed_in_a_row = 0, 0
    with tqdm(total=len(todo), desc="annotate", unit="image", disable=None) as progress:
        try:
            while received < len(todo):
                outcome = outcomes.get()
                received += 1
                progress.update()
                if isinstance(outcome, UserError):
                    raise outcome
                if isinstance(outcome, Failure):
                    report.failures.append(outcome)
                    failed_in_a_row += 1
                    if config.give_up_after and failed_in_a_row >= config.give_up_after:
                        log.warning(
                            "annotate: %d images failed in a row; stopping (last: %s)", failed_in_a_row, outcome.reason
                        )
                        break
                    continue
                failed_in_a_row = 0
                _write(out, outcome, report)
        finally:
            stop.set()
        # Giving up: answers already on their way are still written, none is wasted.
        for worker in workers:
            worker.join()
        while not outcomes.empty():
            outcome = outcomes.get()
            received += 1
            if isinstance(outcome, Failure):
                report.failures.append(outcome)
            elif isinstance(outcome, dict):
                _write(out, outcome, report)
    report.not_attempted = len(todo) - received
    report.failures.sort(key=lambda failure: failure.image)


def _write(out: AnnotationFile, record: dict, report: AnnotateReport) -> None:
    out.append(record)
    report.written += 1
    report.flagged += bool(record["flags"])
    report.modes[record["mode"]] += 1


def _annotate_one(
    sample: Sample, key: str, backend, taxonomy: Taxonomy, config: AnnotateConfig, stop: threading.Event
) -> dict:
    image = fit_image(load_image(sample.path), config.max_image_side)
    prompt = annotation_prompt(sample.label, taxonomy)
    # Per image, so the waits do not depend on which thread took which image.
    rng = random.Random(f"{config.seed}:{key}")
    for attempt in range(config.max_retries + 1):
        if stop.is_set():
            raise _Stopped
        try:
            answer = backend.describe(image, prompt)
            break
        except TransientError as error:
            if attempt == config.max_retries:
                raise TransientError(f"{error} (gave up after {attempt + 1} attempts)") from None
            delay = backoff_delay(attempt, config, rng, error.retry_after)
            log.debug("annotate: %s: %s; retry in %.2f s", key, error, delay)
            if stop.wait(delay):
                raise _Stopped from None
    # An answer asked for as JSON that does not fit the schema is read like any text.
    structured = parse_structured(answer.text) if answer.structured else None
    parsed = structured or parse_answer(answer.text)
    flags = annotation_flags(sample.label, parsed.key_elements, parsed.reasoning, taxonomy)
    if answer.truncated:
        flags += (TRUNCATED_FLAG,)
    return {
        "image": key,
        "label": sample.label,
        "key_elements": parsed.key_elements,
        "reasoning": parsed.reasoning,
        "raw": answer.text,
        "model": backend.model,
        "mode": "structured" if structured else "parsed",
        "flags": list(flags),
    }
