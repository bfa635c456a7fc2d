"""`emovlm-kd bench`: our pipeline against the reference pipeline, same model, same images.

The reference way (the public implementation, re-enacted here on our models):
- batch 1;
- the VLM's answer is sampled (temperature 0.8) and parsed into a one-hot vector;
- the visual encoder runs a second time, for the head;
- gate training regenerates the VLM's answers for every image in every epoch;
- distillation recomputes encoder features (and teacher logits) in every epoch.
Our way: exact label scoring from one shared visual pass, batched, with caches.

Every figure is a ratio of two timings taken in the same process on the same inputs. The
inference ratios time the two ways batch by batch, back to back, and keep the median over
several runs, so a shared, noisy machine still gives stable numbers. Weights are random:
speed does not depend on what a model has learnt.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.prompts import classification_answer, classification_prompt

TARGETS = {
    "inference_speedup_batch1": (">=", 2.0),
    "inference_speedup_batched": (">=", 2.5),
    "floor_ratio": ("<=", 1.10),
    "stage23_train_speedup": (">=", 10.0),
}
HEAD_EPOCHS, GATE_EPOCHS = 5, 10


@dataclass
class BenchConfig:
    preset: str = "bench"
    images: int = 16
    repeats: int = 5
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    # Images for the stage 2+3 training comparison (the reference regenerates per epoch).
    train_images: int = 8
    seed: int = 0
    threads: int = field(default_factory=torch.get_num_threads)
    # "auto": the GPU where there is one (weights in bf16), else the CPU (fp32).
    device: str = "auto"

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def bench_images(count: int, seed: int, size: int = 448) -> list[Image.Image]:
    """Deterministic RGB images with structure (gradients and noise), all one size."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 1, 3)[None, None, :] * (ramp[:, None, None] + ramp[None, :, None]) / 2
        noise = rng.normal(0, 25, (size, size, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return images


def _synchronize() -> None:
    # GPU work is asynchronous: a timing ends when the device has finished.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(function, repeats: int, warm_up: bool = True) -> float:
    """Median wall time of `function()` over `repeats` runs, after one warm-up run."""
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        _synchronize()
        started = time.perf_counter()
        function()
        _synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Models:
    """The preset's VLM with a (random) head, gate and teacher, as a run would hold them.

    `parts` chooses what is built: a deployment holds only its own models.
    """

    def __init__(self, preset_name: str, seed: int, device: torch.device | str = "cpu",
                 parts: tuple[str, ...] = ("head", "gate", "teacher")):
        from emovlm_kd.labels import EMOTION6
        from emovlm_kd.models.gate import Gate, GateConfig
        from emovlm_kd.models.head import DistillHead, HeadConfig
        from emovlm_kd.models.registry import default_dtype, get_preset, load_vlm
        from emovlm_kd.models.teacher import load_teacher
        from emovlm_kd.pipeline import EmoVLMKD

        preset = get_preset(preset_name)
        self.device = torch.device(device)
        self.dtype = default_dtype() if self.device.type == "cuda" else torch.float32
        torch.manual_seed(seed)
        adapter = load_vlm(preset, seed=seed, device=self.device, dtype=self.dtype)
        adapter.model.to(self.device)
        self.taxonomy = EMOTION6
        self.adapter = adapter
        self.head = self.gate = self.teacher = None
        if "head" in parts:
            head = DistillHead(HeadConfig(input_dim=adapter.hidden_size, num_labels=len(EMOTION6)))
            self.head = head.to(self.device).eval()
        if "gate" in parts:
            self.gate = Gate(GateConfig(num_labels=len(EMOTION6))).to(self.device).eval()
        self.pipeline = EmoVLMKD(adapter, self.head, self.gate, EMOTION6) if self.head and self.gate else None
        if "teacher" in parts:
            teacher, self.teacher_processor = load_teacher(preset.teacher, EMOTION6.labels, seed=seed)
            self.teacher = teacher.to(self.device, self.dtype).eval()
        self.preset = preset
        self.prompt = classification_prompt(EMOTION6)
        self.answers = [classification_answer(label) for label in EMOTION6.labels]
        longest = max(len(ids) for ids in adapter.scored_answer_ids(self.answers)[0])
        # A tuned model stops after its answer; random weights would not, so the reference
        # is allowed exactly the longest answer plus its end token (in its favour).
        self.answer_budget = longest + 1

    # ---- the reference way ------------------------------------------------------------

    @torch.no_grad()
    def reference_vlm_onehot(self, image: Image.Image) -> torch.Tensor:
        """Sample an answer at temperature 0.8 and parse it; unparsable gives all zeros."""
        inputs = self.adapter.to_device(self.adapter.encode([image], [self.prompt]))
        output = self.adapter.model.generate(
            **inputs,
            do_sample=True,
            temperature=0.8,
            max_new_tokens=self.answer_budget,
            min_new_tokens=self.answer_budget,
            pad_token_id=self.adapter.tokenizer.pad_token_id,
        )
        text = self.adapter.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        onehot = torch.zeros(len(self.taxonomy), device=self.device)
        match = re.search(r"'emotion':\s*'(\w+)'", text)
        if match and match.group(1) in self.taxonomy.labels:
            onehot[self.taxonomy.labels.index(match.group(1))] = 1
        return onehot

    @torch.no_grad()
    def reference_head_logits(self, image: Image.Image) -> torch.Tensor:
        """The second visual-encoder pass, for the head."""
        return self.head(self.adapter.visual_tokens(self.adapter.encode_images([image])).pooled())

    @torch.no_grad()
    def reference_predict(self, image: Image.Image) -> torch.Tensor:
        # The parsed one-hot answer as log-probabilities (an unparsable answer: uniform).
        vlm = (self.reference_vlm_onehot(image)[None] + 1e-6).log()
        return self.gate(self.reference_head_logits(image), vlm).softmax(-1)

    @torch.no_grad()
    def teacher_logits(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.teacher_processor(images=images, return_tensors="pt")["pixel_values"]
        return self.teacher(pixel_values=pixels.to(self.device, self.dtype)).logits.float()

    # ---- the floor --------------------------------------------------------------------

    @torch.no_grad()
    def bare_forward(self, images: list[Image.Image]) -> None:
        """One forward of prompt + image, keeping the last position's logits and no KV cache:
        the least any prediction from the VLM costs."""
        inputs = self.adapter.to_device(self.adapter.encode(images, [self.prompt] * len(images)))
        self.adapter.model(**inputs, logits_to_keep=1, use_cache=False)


def inference_figures(models: Models, images: list[Image.Image], config: BenchConfig) -> dict:
    """Per-image times of the reference and of ours at each batch size, and the ratios.

    Each ratio comes from timings taken in pairs (see `paired_ratio`); the batch sweep
    alone only picks our best batch size.
    """

    def reference(batch):
        for image in batch:
            models.reference_predict(image)

    def floor(batch):
        models.bare_forward(batch)

    ours = models.pipeline.predict_images
    count, repeats = len(images), config.repeats
    per_image = {}
    for batch_size in config.batch_sizes:
        batches = _batches(images, batch_size)
        per_image[f"ours_batch{batch_size}"] = median_time(lambda: [ours(b) for b in batches], repeats) / count
    best = min(config.batch_sizes, key=lambda b: per_image[f"ours_batch{b}"])
    speedup1, per_image["reference_batch1"], per_image["ours_batch1"] = paired_ratio(
        reference, ours, _batches(images, 1), repeats)
    speedup, _, per_image[f"ours_batch{best}"] = paired_ratio(reference, ours, _batches(images, best), repeats)
    floor_ratio, _, per_image[f"floor_batch{best}"] = paired_ratio(ours, floor, _batches(images, best), repeats)
    return {
        "seconds_per_image": per_image,
        "best_batch_size": best,
        "images_per_second_best": 1 / per_image[f"ours_batch{best}"],
        "inference_speedup_batch1": speedup1,
        "inference_speedup_batched": speedup,
        "floor_ratio": floor_ratio,
    }


def _batches(images: list, size: int) -> list[list]:
    return [images[start : start + size] for start in range(0, len(images), size)]


def paired_ratio(first, second, batches: list[list], repeats: int) -> tuple[float, float, float]:
    """The time of `first(batch)` over that of `second(batch)` for all batches, timed in pairs.

    Each batch is run both ways one right after the other (which goes first alternates), so
    the two timings of a pair see the same state of a shared, noisy machine. Returns the
    median over repeats of the ratio, and each way's median time per image.
    """
    ways = (first, second)
    for way in ways:  # warm-up
        way(batches[0])
    ratios, totals = [], ([], [])
    for repeat in range(repeats):
        spent = [0.0, 0.0]
        for index, batch in enumerate(batches):
            for which in ((0, 1) if (repeat + index) % 2 == 0 else (1, 0)):
                _synchronize()
                started = time.perf_counter()
                ways[which](batch)
                _synchronize()
                spent[which] += time.perf_counter() - started
        ratios.append(spent[0] / spent[1])
        totals[0].append(spent[0])
        totals[1].append(spent[1])
    count = sum(len(batch) for batch in batches)
    return statistics.median(ratios), statistics.median(totals[0]) / count, statistics.median(totals[1]) / count


def training_figures(models: Models, images: list[Image.Image], config: BenchConfig) -> dict:
    """Stages 2 and 3 on N images: the reference recomputes, we cache (building included)."""
    from emovlm_kd.config import DistillStageConfig, GateStageConfig
    from emovlm_kd.losses import distillation_loss
    from emovlm_kd.stages.distill import train_head
    from emovlm_kd.stages.gate import train_gate_module

    labels = torch.arange(len(images), device=models.device) % len(models.taxonomy)
    head_config = DistillStageConfig(epochs=HEAD_EPOCHS, batch_size=1)
    gate_config = GateStageConfig(epochs=GATE_EPOCHS, batch_size=1)

    def reference():
        head = models.head.train()
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-5)
        for _ in range(HEAD_EPOCHS):  # features and teacher logits recomputed each epoch
            for index, image in enumerate(images):
                with torch.no_grad():
                    pooled = models.adapter.visual_tokens(models.adapter.encode_images([image])).pooled()
                    teacher = models.teacher_logits([image])
                loss = distillation_loss(head(pooled), teacher, labels[index : index + 1])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        head.eval()
        gate = models.gate.train()
        optimizer = torch.optim.Adam(gate.parameters(), lr=1e-4)
        for _ in range(GATE_EPOCHS):  # VLM answers regenerated for every image, every epoch
            for index, image in enumerate(images):
                with torch.no_grad():
                    vlm = (models.reference_vlm_onehot(image)[None] + 1e-6).log()
                    head_logits = models.reference_head_logits(image)
                loss = torch.nn.functional.cross_entropy(gate(head_logits, vlm), labels[index : index + 1])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        gate.eval()

    def ours():
        batch_size = max(config.batch_sizes)
        features, teacher, scores = [], [], []
        with torch.no_grad():  # the caches: one visual pass per image, batched
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                inputs = models.adapter.encode(batch, [models.prompt] * len(batch))
                visual = models.adapter.visual_tokens(inputs)
                features.append(visual.pooled().cpu())
                scores.append(models.adapter.answer_logprobs(inputs, models.answers, visual, include_shared=False).cpu())
                teacher.append(models.teacher_logits(batch).cpu())
        # The head and the gate train on the cached tensors, as the stages do.
        features, teacher, probs = torch.cat(features), torch.cat(teacher), torch.cat(scores).softmax(-1)
        head, _ = train_head(features, teacher, labels.cpu(), head_config, config.seed)
        with torch.no_grad():
            head_logits = head(features)
        train_gate_module(head_logits, probs, labels.cpu(), gate_config, len(models.taxonomy), config.seed)

    # One run each, no warm-up (the inference figures warmed every model up): the
    # reference takes minutes, and its epochs repeat identical work.
    reference_seconds = median_time(reference, 1, warm_up=False)
    ours_seconds = median_time(ours, 1, warm_up=False)
    return {
        "train_images": len(images),
        "reference_seconds": reference_seconds,
        "ours_seconds": ours_seconds,
        "stage23_train_speedup": reference_seconds / ours_seconds,
    }


_MEMORY_PROBE = """
import json, sys, torch
from emovlm_kd.apps.bench import measure_deployment_memory
print(json.dumps(measure_deployment_memory(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
"""
# What each deployment holds: EmoVLM-KD is the VLM with the head and the gate; the
# alternative is the VLM and the teacher side by side.
DEPLOYMENTS = {"emovlm_kd": ("head", "gate"), "dual": ("teacher",)}


def _resident_peak_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: the peak since the process started
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_resident_peak() -> bool:
    """Start VmHWM again from the current resident memory (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measure_deployment_memory(mode: str, preset: str, device: str, count: int) -> dict:
    """Peak memory of one deployment classifying `count` images, in this process: its models
    loaded, then the peak counted from there (so building them, which briefly needs more,
    is not counted), weights included."""
    models = Models(preset, 0, device=device, parts=DEPLOYMENTS[mode])
    images = bench_images(count, 1)
    on_gpu = models.device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_resident_peak()
    with torch.no_grad():
        if mode == "emovlm_kd":
            models.pipeline.predict_images(images)
        else:
            inputs = models.adapter.encode(images, [models.prompt] * len(images))
            models.adapter.answer_logprobs(inputs, models.answers, include_shared=False).softmax(-1)
            models.teacher_logits(images).softmax(-1)
    if on_gpu:
        torch.cuda.synchronize()
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "kind": "GPU memory allocated"}
    return {"peak_mb": _resident_peak_mb(), "kind": "resident memory (VmHWM)"}


def memory_figures(models: Models, config: BenchConfig) -> dict:
    """Peak memory of EmoVLM-KD inference vs the VLM and the teacher deployed together, each
    measured in a fresh process that builds only that deployment's models (peak resident
    memory on CPU, peak allocated GPU memory on a GPU)."""
    peaks, kind = {}, None
    for mode in DEPLOYMENTS:
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, mode, config.preset, str(models.device),
             str(min(config.images, max(config.batch_sizes)))],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"the memory probe failed: {result.stderr.strip()[-2000:]}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        peaks[mode], kind = measured["peak_mb"], measured["kind"]
    vlm_params = count_parameters(models.adapter.model)
    overhead = count_parameters(models.head) + count_parameters(models.gate)
    return {
        "peak_memory_mb": peaks,
        "peak_memory_kind": kind,
        "memory_ratio_vs_dual": peaks["emovlm_kd"] / peaks["dual"],
        "vlm_parameters": vlm_params,
        "teacher_parameters": count_parameters(models.teacher),
        "head_gate_parameters": overhead,
        "head_gate_param_overhead_pct": 100 * overhead / vlm_params,
    }


def run_bench(config: BenchConfig, progress=print, checkpoint=None) -> dict:
    """Every figure of the benchmark, with the targets and whether each is met.

    `checkpoint(result)` is called after each part with the figures so far (the CLI writes
    them), so a run cut short still leaves what it measured.
    """
    torch.set_num_threads(config.threads)
    device = config.resolved_device()
    models = Models(config.preset, config.seed, device=device)
    images = bench_images(config.images, config.seed)
    parameters = count_parameters(models.adapter.model)
    progress(f"bench: {config.preset} preset, {parameters / 1e6:,.0f}M parameters on {device} ({models.dtype}), "
             f"{config.images} images, {config.repeats} repeats, {config.threads} CPU threads")
    result = {"config": asdict(config), "machine": _machine(device, models.dtype)}
    parts = (("inference", lambda: inference_figures(models, images, config)),
             ("stage 2+3 training", lambda: training_figures(models, images[: config.train_images], config)),
             ("memory", lambda: memory_figures(models, config)))
    for name, measure in parts:
        progress(f"bench: {name} ...")
        result.update(measure())
        result["targets"] = {key: {"target": f"{op} {value}", "met": _meets(result[key], op, value)}
                             for key, (op, value) in TARGETS.items() if key in result}
        if checkpoint is not None:
            checkpoint(result)
    return result


def _machine(device: torch.device, dtype: torch.dtype) -> dict:
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "device": device.type, "dtype": str(dtype)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def _meets(value: float, op: str, target: float) -> bool:
    return value >= target if op == ">=" else value <= target
