"""Where this process stands among those of `accelerate launch` or `torchrun`.

A single process (the usual case) never initialises a process group. Under a launcher,
accelerate's PartialState sets one up (NCCL on GPUs, gloo on CPUs); the stages then shard
caching across ranks and keep every write, log line and progress bar on rank 0.
"""

from __future__ import annotations

import functools
import os


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def _state():
    import torch
    from accelerate import PartialState

    # cpu=True lets accelerate see a CPU-only launch as multi-CPU (gloo) instead of one process.
    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return _state().num_processes if launched() else 1


def rank() -> int:
    return _state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def device():
    """The device this process computes on: its own GPU under a launcher, the GPU where
    there is one, else the CPU."""
    import torch

    if launched():
        return _state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def barrier() -> None:
    if launched():
        _state().wait_for_everyone()
