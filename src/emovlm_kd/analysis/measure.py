"""Measured cost of deployments: time per call and peak memory, for `emovlm-kd bench` and
`emovlm-kd evaluate --efficiency` alike.

One way to time: the wall time of a call, the device synchronized before and after it (GPU
work is asynchronous), and the median over calls after one warm-up call.

One way to count memory: a deployment's weights (parameters and buffers in their own dtypes)
plus the peak of the tensors one call allocates beyond those already allocated. On a GPU
the CUDA allocator's own statistics give the peak; on a CPU torch's profiler records every
allocation and free of each operator, and the peak is that of their running sum in time
order. Both count tensor bytes, so a CPU figure and a GPU figure mean the same thing; what
the process holds besides (interpreter, libraries, tokenizer) is left out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from emovlm_kd.models.parameters import count_parameters

MIB = 2**20


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op where nothing ran on one)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def elapsed(function: Callable[[], object]) -> float:
    """Wall seconds of one `function()` call, the device's work included."""
    synchronize()
    started = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - started


def median_time(calls: Iterable[Callable[[], object]], warm_up: bool = True) -> float:
    """Median wall seconds of `calls`, each timed alone, after one untimed run of the first."""
    calls = list(calls)
    if warm_up:
        calls[0]()
    return statistics.median(elapsed(call) for call in calls)


def interleaved_medians(calls: dict, repeats: int) -> dict:
    """Each call's median seconds over `repeats` rounds that take the calls in turn (in
    reverse order every other round), after one warm-up each: a machine whose speed drifts
    slows them alike, so the fastest is not merely the one timed in a quiet minute."""
    for call in calls.values():
        call()
    seconds = {key: [] for key in calls}
    for round_ in range(repeats):
        for key in list(calls)[:: 1 if round_ % 2 == 0 else -1]:
            seconds[key].append(elapsed(calls[key]))
    return {key: statistics.median(times) for key, times in seconds.items()}


def paired_ratio(first, second, batches: list[list], repeats: int, every_ratio: bool = False) -> tuple:
    """The time of `first(batch)` over that of `second(batch)` for all batches, timed in pairs.

    Each batch is run both ways one right after the other (which goes first alternates), so
    the two timings of a pair see the same state of a shared, noisy machine. Returns the
    median over repeats of the ratio, and each way's median time per image; with
    `every_ratio`, also the list of each repeat's ratio.
    """
    ways = (first, second)
    for way in ways:  # warm-up
        way(batches[0])
    ratios, totals = [], ([], [])
    for repeat in range(repeats):
        spent = [0.0, 0.0]
        for index, batch in enumerate(batches):
            for which in ((0, 1) if (repeat + index) % 2 == 0 else (1, 0)):
                spent[which] += elapsed(functools.partial(ways[which], batch))
        ratios.append(spent[0] / spent[1])
        totals[0].append(spent[0])
        totals[1].append(spent[1])
    count = sum(len(batch) for batch in batches)
    figures = (statistics.median(ratios), statistics.median(totals[0]) / count, statistics.median(totals[1]) / count)
    return (*figures, ratios) if every_ratio else figures


def weight_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the modules' parameters and buffers, in their own dtypes."""
    tensors = [tensor for module in modules for tensor in (*module.parameters(), *module.buffers())]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def peak_allocation(function: Callable[[], object], device: torch.device) -> int:
    """Bytes `function()` allocates at its peak beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in profiler.events()
        if event.self_cpu_memory_usage
    )
    running = peak = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2, where the profiler's native tracer prints start/stop lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def memory_method(device: torch.device) -> str:
    """How `peak_allocation` counts on `device`, in words."""
    return "CUDA allocator peak" if device.type == "cuda" else "torch profiler, allocations in time order"


def deployment_memory(function: Callable[[], object], modules: list[nn.Module], device: torch.device) -> dict:
    """MiB of a deployment's weights and of the peak activations of one `function()` call."""
    return {
        "weights_mib": weight_bytes(modules) / MIB,
        "activations_mib": peak_allocation(function, device) / MIB,
    }


def measure_deployments(deployments: dict[str, tuple[Callable, list[nn.Module]]], items: list,
                        device: torch.device) -> dict[str, dict]:
    """Per deployment (a function of one item and the modules it holds): parameters, weights,
    latency per item (one call each, median, after a warm-up call) and peak activations (of
    one call on the first item)."""
    rows = {}
    for name, (function, modules) in deployments.items():
        # Timed first: the memory is then that of a warm call.
        seconds = median_time(functools.partial(function, item) for item in items)
        memory = deployment_memory(functools.partial(function, items[0]), modules, device)
        rows[name] = {
            "parameters": sum(count_parameters(module) for module in modules),
            "weights_mib": memory["weights_mib"],
            "latency_ms": 1000 * seconds,
            "activations_mib": memory["activations_mib"],
        }
    return rows


def measure_model(model, run, samples: list) -> dict:
    """Latency per image (batch 1, median) and memory of a loaded EmoVLM-KD and the run's
    teacher, deployed three ways: the VLM alone, the VLM and the teacher, and EmoVLM-KD."""
    from emovlm_kd.models.teacher import load_teacher
    from emovlm_kd.run_folder import load_rgb

    adapter = model.adapter
    device = adapter.device
    teacher, processor = load_teacher(str(run.require("teacher")), model.taxonomy.labels)
    teacher = teacher.to(device).eval()
    pictures = [load_rgb(sample.path) for sample in samples]

    @torch.no_grad()
    def vlm_alone(image):
        adapter.answer_logprobs(adapter.encode([image], [model.prompt]), model.answers)

    @torch.no_grad()
    def teacher_alone(image):
        teacher(pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"].to(device))

    def both(image):
        vlm_alone(image)
        teacher_alone(image)

    deployments = {
        "vlm": (vlm_alone, [adapter.model]),
        "vlm_and_teacher": (both, [adapter.model, teacher]),
        "emovlm_kd": (lambda image: model.predict_images([image]), [adapter.model, model.head, model.gate]),
    }
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "images": len(pictures),
        "memory_method": memory_method(device),
        "deployments": measure_deployments(deployments, pictures, device),
    }


def run_efficiency(run, samples: list, images: int = 4, image_size: int = 448) -> dict:
    """The paper-scale table for the run's taxonomy, head and gate, and measurements of the
    run's own models on up to `images` of `samples`."""
    from emovlm_kd.analysis.cost import paper_scale, workload_for
    from emovlm_kd.pipeline import EmoVLMKD

    model = EmoVLMKD.from_pretrained(run.directory)
    workload = workload_for(model.adapter, model.taxonomy, image_size)
    return {
        "paper_scale": paper_scale(workload, model.head.config, model.gate.config),
        "measured": dict(measure_model(model, run, samples[:images]), preset=run.config.preset),
    }
