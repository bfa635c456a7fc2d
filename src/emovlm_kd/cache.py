"""Per-image tensors (visual features, teacher logits, VLM class scores) cached in safetensors.

A cache is a folder per (kind, fingerprint): the fingerprint hashes whatever decides the
values (model weights, processor settings, prompt), and rows are keyed by the image's
content hash, so a renamed or moved image is still found and a changed model never reads
stale rows. Rows are written in shards as they are computed, each shard atomically, so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from emovlm_kd import distributed
from emovlm_kd.io import atomic_path


def fingerprint(tensors: dict[str, torch.Tensor] | None = None, **settings) -> str:
    """A short hash of named tensors and JSON-able settings."""
    digest = hashlib.sha256()
    for name, tensor in sorted((tensors or {}).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def module_fingerprint(module: torch.nn.Module, **settings) -> str:
    return fingerprint(dict(module.state_dict()), **settings)


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
            for shard in sorted(self.directory.glob("shard-*.safetensors")):
                with safe_open(str(shard), framework="pt") as handle:
                    for key in handle.keys():
                        self._rows[key] = handle.get_tensor(key)
        return self._rows

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        if not rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        content = hashlib.sha256("".join(sorted(rows)).encode()).hexdigest()[:16]
        with atomic_path(self.directory / f"shard-{content}.safetensors") as tmp:
            save_file({key: value.detach().cpu().contiguous() for key, value in rows.items()}, str(tmp))
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
