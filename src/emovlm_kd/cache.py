"""Per-image tensors (visual features, teacher logits, VLM class scores) cached in safetensors.

A cache is a folder per (kind, fingerprint): the fingerprint hashes whatever decides the
values (model weights, processor settings, prompt), and rows are keyed by the image's
content hash, so a renamed or moved image is still found and a changed model never reads
stale rows. Rows are written in shards as they are computed, each shard atomically, so an
interrupted run keeps what it finished. Each shard carries a SHA-256 of its tensors in its
metadata; a shard that fails it (truncated, bit rot, edited) is discarded and its rows are
computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from emovlm_kd import distributed
from emovlm_kd.io import atomic_path, remove_stale_temporaries

log = logging.getLogger("emovlm_kd")
CHECKSUM = "sha256"
# Temporaries of interrupted writes are removed once this old: another host sharing the
# cache folder may still be writing a younger one.
STALE_TEMPORARY_S = 3600


def fingerprint(tensors: dict[str, torch.Tensor] | None = None, **settings) -> str:
    """A short hash of named tensors and JSON-able settings."""
    digest = hashlib.sha256(content_sha256(tensors or {}).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of `tensors`, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_shard(path: Path) -> dict[str, torch.Tensor] | None:
    """A shard's rows if its checksum holds; otherwise None, the shard deleted with a warning."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            expected = (handle.metadata() or {}).get(CHECKSUM)
            rows = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        return None  # another process discarded it a moment ago
    except Exception as error:
        problem = f"unreadable: {error}"
    else:
        if expected is not None and expected == content_sha256(rows):
            return rows
        problem = "checksum mismatch" if expected else "no checksum: written by an older version"
    log.warning("cache: discarding damaged shard %s (%s); its rows will be computed again", path, problem)
    path.unlink(missing_ok=True)
    return None


def file_fingerprint(*paths: Path, **settings) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class TensorCache:
    """Rows keyed by image hash for one (kind, fingerprint)."""

    def __init__(self, root: str | Path, kind: str, fingerprint: str):
        self.directory = Path(root) / kind / fingerprint
        self._rows: dict[str, torch.Tensor] | None = None

    def rows(self) -> dict[str, torch.Tensor]:
        if self._rows is None:
            self._rows = {}
            if self.directory.is_dir() and distributed.is_main():
                remove_stale_temporaries(self.directory, min_age_s=STALE_TEMPORARY_S)
            for shard in sorted(self.directory.glob("shard-*.safetensors")):
                self._rows.update(read_shard(shard) or {})
        return self._rows

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        if not rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        content = hashlib.sha256("".join(sorted(rows)).encode()).hexdigest()[:16]
        tensors = {key: value.detach().cpu().contiguous() for key, value in rows.items()}
        with atomic_path(self.directory / f"shard-{content}.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={CHECKSUM: content_sha256(tensors)})
        self.rows().update(rows)

    def fill(
        self,
        keys: Sequence[str],
        items: Sequence,
        compute: Callable[[list], torch.Tensor],
        batch_size: int,
        description: str,
        flush_every: int = 256,
    ) -> torch.Tensor:
        """[N, ...] rows for `keys`, computing the missing ones with `compute(items[batch])`.

        Under several processes each computes every world_size-th missing row and writes
        its own shards; after a barrier all read the merged folder, so no row is computed
        twice or missed, whatever the count.
        """
        if distributed.launched():
            # Every rank must split the same to-do list: none may start writing before
            # all have read what is already there.
            distributed.barrier()
        have = self.rows()
        todo = [index for index, key in enumerate(keys) if key not in have]
        # Duplicate images (same content) are computed once.
        seen: set[str] = set()
        todo = [i for i in todo if not (keys[i] in seen or seen.add(keys[i]))]
        todo = todo[distributed.rank() :: distributed.world_size()]
        pending: dict[str, torch.Tensor] = {}
        quiet = not todo or not distributed.is_main()
        with tqdm(total=len(todo), desc=description, disable=quiet, leave=False) as progress:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                values = compute([items[i] for i in batch])
                pending.update({keys[i]: value for i, value in zip(batch, values)})
                progress.update(len(batch))
                if len(pending) >= flush_every:
                    self.add(pending)
                    pending = {}
        self.add(pending)
        if distributed.launched():
            distributed.barrier()
            self._rows = None  # re-read: the other ranks' shards are on disk now
        have = self.rows()
        return torch.stack([have[key] for key in keys])
