"""Where one instruction-tuning step's time goes: ours (an image's tasks packed) against the
reference (every task its own example), as `bench` times them, then torch's profiler.

    python scripts/profile_instruct.py bench-7b cuda 4     (tiny cpu 2: to try it)"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from emovlm_kd.analysis.measure import synchronize
from emovlm_kd.apps.bench.figures import Models, bench_images
from emovlm_kd.apps.bench.instruct import KEY_ELEMENTS, REASONING
from emovlm_kd.apps.bench.profile import _attention_kernels
from emovlm_kd.config import InstructStageConfig
from emovlm_kd.prompts import (
    INFERENCE_PROMPT,
    OBSERVATION_PROMPT,
    classification_answer,
    classification_prompt,
)
from emovlm_kd.stages.instruct import apply_lora, keep_answer_logits

preset, device, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
models = Models(preset, 0, device)
print(f"models built in {time.perf_counter() - t0:.1f} s", flush=True)
adapter = models.adapter
images = bench_images(count, 0)
prompts = [classification_prompt(models.taxonomy), OBSERVATION_PROMPT, INFERENCE_PROMPT]
labels = models.taxonomy.labels
answers = [[classification_answer(labels[i % len(labels)]), KEY_ELEMENTS, REASONING] for i in range(count)]
settings = InstructStageConfig()
print("instruct settings:", settings, flush=True)
for module in adapter.vision_modules().values():
    module.requires_grad_(False)
model = apply_lora(adapter, settings, quantized=False)
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)

def now():
    synchronize()
    return time.perf_counter()

def step(make_inputs, parts):
    a = now(); inputs = make_inputs(); b = now()
    inputs = {k: v.to(models.device) if torch.is_tensor(v) else v for k, v in inputs.items()}; c = now()
    loss = model(**inputs).loss; d = now()
    optimizer.zero_grad(); loss.backward(); e = now()
    optimizer.step(); f = now()
    for name, x in zip(("encode", "to_device", "forward", "backward", "optimizer"), (b - a, c - b, d - c, e - d, f - e)):
        parts[name] = parts.get(name, 0.0) + x
    return inputs

def ours_inputs(batch):
    return keep_answer_logits(adapter.encode_packed([images[i] for i in batch], [prompts] * len(batch), [answers[i] for i in batch]))

def describe(inputs):
    return {k: (tuple(v.shape), str(v.dtype)) if torch.is_tensor(v) else type(v).__name__ for k, v in inputs.items()}

batch = list(range(count))
for label in ("warm-up", "timed"):
    parts = {}
    inputs = step(lambda: ours_inputs(batch), parts)
    print(f"ours {label}, {count} images packed in one step:", {k: round(v, 4) for k, v in parts.items()}, flush=True)
print("ours inputs:", describe(inputs), flush=True)
for label in ("warm-up", "timed"):
    parts = {}
    for i in batch:
        for prompt, answer in zip(prompts, answers[i]):
            inputs = step(lambda i=i, p=prompt, a=answer: adapter.encode([images[i]], [p], [a]), parts)
    print(f"reference {label}, {3 * count} steps:", {k: round(v, 4) for k, v in parts.items()}, flush=True)
print("reference inputs (last):", describe(inputs), flush=True)

on_gpu = models.device.type == "cuda"
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
for name, run in (("ours", lambda: step(lambda: ours_inputs(batch), {})),
                  ("reference one example", lambda: step(lambda: adapter.encode([images[0]], [prompts[2]], [answers[0][2]]), {}))):
    with profile(activities=acts, record_shapes=True) as prof:
        run()
        synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))[:18]
    total = sum(getattr(e, key) for e in prof.key_averages()) / 1000
    print(f"--- {name}: total self {key} {total:.1f} ms")
    for e in events:
        print(f"  {e.key[:60]:60s} {getattr(e, key) / 1000:9.1f} ms {e.count:6d} calls")
    for row in _attention_kernels(prof.events()):
        print("  attention:", row)
    sys.stdout.flush()
