"""The annotation file: JSONL, one record per image, appended and fsync'd as each arrives.

A record is written with a single `write` of the whole line, newline included, so only a
crash of the machine (not of the program) can leave a torn last line. Opening the file
again finds such a tail and cuts it off (that image is annotated again), so a record is
never lost once written and never written twice. An exclusive lock keeps two runs from
appending to the same file at once.

A record asked for again (`annotate --retry-flagged`) is appended like any other, so a
crash loses nothing; `AnnotationFile.keep_newest` then rewrites the file with the newest
record of each image, through a temporary file renamed over it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from emovlm_kd.data.annotations import annotation_flags
from emovlm_kd.errors import UserError
from emovlm_kd.labels import Taxonomy

log = logging.getLogger("emovlm_kd")


@dataclass
class RecordsRead:
    """The records of a file; `torn_tail` holds the bytes of a last line cut short, if any."""

    records: list[dict] = field(default_factory=list)
    torn_tail: bytes = b""
    missing_final_newline: bool = False


def parse_records(data: bytes, path: Path) -> RecordsRead:
    """Records of JSONL bytes; an unreadable last line is a torn tail, any other bad line an error."""
    result = RecordsRead()
    lines, offset = [], 0
    for line in data.split(b"\n"):
        if line.strip():
            lines.append((offset, line))
        offset += len(line) + 1
    for index, (start, line) in enumerate(lines):
        record = _record(line)
        if record is not None:
            result.records.append(record)
            continue
        number = data.count(b"\n", 0, start) + 1
        if index == len(lines) - 1 and _looks_torn(line):
            result.torn_tail = data[start:]
            break
        raise UserError(
            f"line {number} of {path} is not an annotation record (a JSON object with 'image' and "
            "'label'); fix or delete that line, then rerun."
        )
    ends_cleanly = data.rstrip(b" \t\r").endswith(b"\n")
    result.missing_final_newline = bool(result.records) and not result.torn_tail and not ends_cleanly
    return result


def record_flags(record: dict, taxonomy: Taxonomy) -> tuple[str, ...]:
    """A record's stored flags plus the checks run again, as training judges it."""
    label = taxonomy.normalise(str(record["label"]))
    key_elements, reasoning = str(record.get("key_elements") or ""), str(record.get("reasoning") or "")
    stored = record.get("flags") or []
    return tuple(dict.fromkeys([*map(str, stored), *annotation_flags(label, key_elements, reasoning, taxonomy)]))


def newest_records(records: list[dict]) -> dict[str, dict]:
    """image -> its last record, in the order the images first appear."""
    # Assigning an existing key keeps its place, so a retried record takes its predecessor's.
    return {record["image"]: record for record in records}


def run_settings_path(path: str | Path) -> Path:
    """Where the run that writes `path` saves its settings: `annotations.jsonl` -> `annotations.config.json`."""
    return Path(path).with_suffix(".config.json")


def read_records(path: str | Path) -> RecordsRead:
    """Every record of an annotation file, for reading only (a torn tail is reported, not cut)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"annotation file {path} does not exist; check the path or create it with `emovlm-kd annotate`."
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}); check its permissions.") from None
    return parse_records(data, path)


def _looks_torn(line: bytes) -> bool:
    # The start of one of our records cut short, or the zeros a file system can leave
    # after a power cut; anything else is someone else's file and is never cut.
    if not (line.lstrip().startswith(b"{") or not line.strip(b"\0")):
        return False
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "label" not in record:
        return None
    return record


class AnnotationFile:
    """An annotation JSONL opened for appending: locked, repaired, and aware of what is done.

    Use as a context manager: `with AnnotationFile(path) as out: out.append(record)`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []
        self.done: set[str] = set()
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> AnnotationFile:
        if self.path.is_dir():
            raise UserError(
                f"--out {self.path} is a folder; pass a file name such as {self.path / 'annotations.jsonl'}."
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise UserError(f"cannot open {self.path} for writing ({error.strerror}); pick another --out.") from None
        try:
            _lock_exclusively(self._fd, self.path)
            self._load()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def _load(self) -> None:
        data = self.path.read_bytes()
        read = parse_records(data, self.path)
        if read.torn_tail:
            keep = len(data) - len(read.torn_tail)
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
            log.warning(
                "annotate: cut a torn last line (%d bytes) from %s, left by an interrupted write; "
                "that image is annotated again", len(read.torn_tail), self.path,
            )
        elif read.missing_final_newline:
            self._write(b"\n")
        self.records = read.records
        self.done = {record["image"] for record in read.records}

    def append(self, record: dict) -> None:
        """Write one record as one line, durably (flushed and fsync'd) before returning."""
        with self._lock:
            self._write(_line(record))
            self.records.append(record)
            self.done.add(record["image"])

    def keep_newest(self) -> None:
        """Rewrite the file with only the last record of each image, atomically.

        The new file is written, fsync'd and locked beside the old one, then renamed over
        it: a crash leaves the old file whole, and no other run can slip in between.
        """
        newest = list(newest_records(self.records).values())
        if len(newest) == len(self.records):
            return
        temporary = self.path.with_name(f".{self.path.name}.rewrite")
        appending = self._fd
        try:
            self._fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            _lock_exclusively(self._fd, temporary)
            self._write(b"".join(map(_line, newest)))
            os.replace(temporary, self.path)
        except OSError as error:
            self._abandon(temporary, appending)
            raise UserError(
                f"cannot rewrite {self.path} ({error.strerror}); it is left as it was, free some space and rerun."
            ) from None
        except BaseException:
            self._abandon(temporary, appending)
            raise
        os.close(appending)
        _fsync_folder(self.path.parent)
        self.records = newest

    def _abandon(self, temporary: Path, appending: int) -> None:
        if self._fd != appending:
            os.close(self._fd)
        self._fd = appending
        temporary.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as error:
            # A line cut short here is found and repaired by the next run.
            raise UserError(
                f"cannot write to {self.path} ({error.strerror}); free some space or pick another --out, then rerun."
            ) from None


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _fsync_folder(folder: Path) -> None:
    # The rename is durable once the folder is; systems that cannot fsync a folder skip it.
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _lock_exclusively(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run per file is then up to the user.
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(
            f"another `emovlm-kd annotate` is writing {path}; wait for it to finish, or write to another --out."
        ) from None
