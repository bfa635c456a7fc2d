"""`emovlm-kd bench --profile`: where one batch of our inference path spends its time.

Three views of one `predict_images` call at the best batch size, each after a warm-up call:
- the split of its wall time between preprocessing (image processor and tokenizer), the
  vision tower, the language model and scoring (the LM head at the scored positions, the
  answer scores, the head and the gate), timed by hooks on the two towers;
- which kernel scaled dot-product attention dispatched to in each tower, with the shapes it
  saw (a fused kernel, or the unfused math fallback that materialises every score);
- the operators that took the most self time in torch's profiler (device time on a GPU).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from emovlm_kd.analysis.measure import elapsed, quiet_stderr, synchronize

# What each backend of `scaled_dot_product_attention` is called in the profiler.
ATTENTION_KERNELS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_flash_attention": "flash (CUDA)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient (CUDA)",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_attention_math": "math (unfused fallback)",
}
TOWERS = ("vision tower", "language model")


def profile_figures(models, images: list, batch_size: int, top: int = 15) -> dict:
    """The profile of one batch of `batch_size` images through `models.pipeline`."""
    batch = images[:batch_size]
    adapter = models.adapter
    on_gpu = adapter.device.type == "cuda"

    def predict():
        models.pipeline.predict_images(batch)

    predict()  # warm-up
    with _tower_ranges(models, timed=True) as seconds:
        total = elapsed(predict)
    preprocessing = elapsed(lambda: adapter.to_device(adapter.encode(batch, [models.prompt] * len(batch))))
    split = {"preprocessing": preprocessing, **seconds}
    split["scoring"] = max(0.0, total - sum(split.values()))

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with quiet_stderr(), profile(activities=activities, record_shapes=True) as profiler, _tower_ranges(models):
        predict()
        synchronize()
    self_time = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    operators = [event for event in profiler.key_averages() if event.key not in TOWERS]
    spent = sum(getattr(event, self_time) for event in operators) or 1.0
    ranked = sorted(operators, key=lambda event: -getattr(event, self_time))[:top]
    return {
        "batch_size": len(batch),
        "device": adapter.device.type,
        "threads": torch.get_num_threads(),
        "seconds": total,
        "split_seconds": split,
        "attention": _attention_kernels(profiler.events()),
        "self_time": "device" if on_gpu else "cpu",
        "top_operators": [{"name": event.key, "self_ms": getattr(event, self_time) / 1000,
                           "share": getattr(event, self_time) / spent, "calls": event.count} for event in ranked],
    }


@contextlib.contextmanager
def _tower_ranges(models, timed: bool = False):
    """Within it, each call of the vision tower and of the language model is a profiler range
    named after it; with `timed`, their wall seconds (the device synchronized) add up in the
    dict it yields."""
    adapter = models.adapter
    language = getattr(adapter.model.model, adapter.language_model_name)
    towers = [("vision tower", module) for module in adapter.vision_modules().values()] + [("language model", language)]
    seconds = dict.fromkeys(TOWERS, 0.0)
    running = {}  # tower -> (its open profiler range, when it started)

    def opener(name):
        def open_range(module, args):
            if timed:
                synchronize()
            running[name] = (record_function(name).__enter__(), time.perf_counter())

        return open_range

    def closer(name):
        def close_range(module, args, output):
            if timed:
                synchronize()
            label, started = running.pop(name)
            label.__exit__(None, None, None)
            seconds[name] += time.perf_counter() - started

        return close_range

    handles = [hook for name, module in towers for hook in (module.register_forward_pre_hook(opener(name)),
                                                             module.register_forward_hook(closer(name)))]
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()


def _attention_kernels(events) -> list[dict]:
    """One row per (tower, kernel, shapes) that attention ran: calls, query and mask shapes."""
    rows = Counter()
    for event in events:
        if event.name not in ATTENTION_KERNELS:
            continue
        shapes = [shape for shape in event.input_shapes if len(shape) == 4]
        # The query comes first; a 4-D input after query, key and value is the mask.
        query, mask = shapes[0], (shapes[3] if len(shapes) > 3 else None)
        rows[(_tower_of(event), ATTENTION_KERNELS[event.name], tuple(query), mask and tuple(mask))] += 1
    return [{"tower": tower, "kernel": kernel, "calls": calls, "query": list(query),
             "mask": list(mask) if mask else None} for (tower, kernel, query, mask), calls in rows.items()]


def _tower_of(event) -> str:
    parent = event.cpu_parent
    while parent is not None and parent.name not in TOWERS:
        parent = parent.cpu_parent
    return parent.name if parent is not None else "other"
