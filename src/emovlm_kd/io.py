"""Atomic file writes (a crash never leaves a half-written artifact behind), and the check that
an output can be written at all, made before a command starts its work."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from emovlm_kd.errors import UserError

# What an interrupted atomic write leaves behind: `.<name>.tmp<pid>` or `.<name>.old<pid>`.
_TEMPORARY = re.compile(r"^\..+\.(tmp|old)(\d+)$")


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as error:
        if error.filename != str(tmp):
            raise
        raise OSError(error.errno, error.strerror, str(target)) from error  # named as the caller knows it
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    Readers find the old folder or the new one, never a mix. Between the two renames there
    is briefly no `target` at all, which reads as an unfinished stage.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path, min_age_s: float = 0.0) -> int:
    """Delete what killed processes left under `folder` from atomic writes; returns how many.

    A temporary is stale when the process that made it no longer runs on this host and it
    is at least `min_age_s` old (an age guards folders shared with other hosts).
    """
    removed = 0
    for path in sorted(Path(folder).rglob(".*")):
        match = _TEMPORARY.match(path.name)
        if not match or _process_alive(int(match.group(2))):
            continue
        try:
            if time.time() - path.lstat().st_mtime < min_age_s:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # inside one removed already, or removed by another process
        removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def check_writable(path: str | Path, *, folder: bool, flag: str = "--out") -> None:
    """Refuse, before any work, an output that could not be written: a file where a folder is
    wanted (or a folder where a file is), a file on its way, or a folder without write
    permission. A command that learns this only when it writes has already spent its work."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file")
        raise UserError(f"{flag} {path} is {kind}; give the path of {wanted} to write.", exit_code=2)
    existing = next(ancestor for ancestor in (path, *path.absolute().parents) if ancestor.exists())
    if existing != path and not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {existing} is a file, not a folder; choose another path.",
                        exit_code=2)
    if not os.access(existing, os.W_OK | (os.X_OK if existing.is_dir() else 0)):
        raise UserError(f"{flag} {path} cannot be written: you have no write permission on {existing}; choose a "
                        f"path you can write.", exit_code=2)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(target: str | Path, data) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
