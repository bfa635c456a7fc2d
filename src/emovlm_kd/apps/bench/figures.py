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
speed does not depend on what a model has learnt. Timings and memory are taken as
`emovlm_kd.analysis.measure` takes them, for `evaluate --efficiency` too.
"""

from __future__ import annotations

import platform
import re
from dataclasses import asdict, replace

import numpy as np
import torch
from PIL import Image

from emovlm_kd import distributed
from emovlm_kd.analysis.measure import deployment_memory, elapsed, interleaved_medians, memory_method, paired_ratio
from emovlm_kd.apps.bench.config import BenchConfig
from emovlm_kd.apps.bench.instruct import instruct_figures
from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.models.registry import INFERENCE_DTYPES
from emovlm_kd.prompts import classification_answer, classification_prompt

TARGETS = {
    "inference_speedup_batch1": (">=", 2.0),
    "inference_speedup_batched": (">=", 2.5),
    "floor_ratio": ("<=", 1.10),
    "stage23_train_speedup": (">=", 10.0),
    "predict_end_to_end_ratio": ("<=", 1.10),
    "instruct_speedup": (">=", 1.8),
    "batch_scaling": ("<=", 1.05),
    "serve_ratio": (">=", 0.8),  # with --serve
}
HEAD_EPOCHS, GATE_EPOCHS = 5, 10
# Dense bf16 TFLOP/s from NVIDIA's data sheets (SXM parts), by a fragment of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def resolved_device(config: BenchConfig) -> torch.device:
    return distributed.device() if config.device == "auto" else torch.device(config.device)


BENCH_IMAGE_SIZE = 448


def bench_images(count: int, seed: int, size: int = BENCH_IMAGE_SIZE) -> list[Image.Image]:
    """Deterministic RGB images with structure (gradients and noise), all one size."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 1, 3)[None, None, :] * (ramp[:, None, None] + ramp[None, :, None]) / 2
        noise = rng.normal(0, 25, (size, size, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return images


def bench_jpegs(folder, count: int, seed: int) -> list:
    """`count` JPEGs of mixed sizes (each side 200 to 1199 px) written into `folder`, as
    `predict` would read them from disk; their paths, in order."""
    from pathlib import Path

    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = (int(side) for side in rng.integers(200, 1200, size=2))
        path = Path(folder) / f"{index:03d}.jpg"
        bench_images(1, seed + index, size=max(width, height))[0].resize((width, height)).save(path, quality=90)
        paths.append(path)
    return paths


class Models:
    """The preset's VLM with a (random) head, gate and teacher, as a run would hold them."""

    def __init__(self, preset_name: str, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        from emovlm_kd.labels import EMOTION6
        from emovlm_kd.models.gate import Gate, GateConfig
        from emovlm_kd.models.head import DistillHead, HeadConfig
        from emovlm_kd.models.registry import default_dtype, get_preset, load_vlm
        from emovlm_kd.models.teacher import load_teacher
        from emovlm_kd.pipeline import EmoVLMKD

        preset = get_preset(preset_name)
        self.device = torch.device(device)
        self.dtype = dtype or (default_dtype() if self.device.type == "cuda" else torch.float32)
        torch.manual_seed(seed)
        adapter = load_vlm(preset, seed=seed, device=self.device, dtype=self.dtype)
        adapter.model.to(self.device)
        self.taxonomy = EMOTION6
        self.adapter = adapter
        head = DistillHead(HeadConfig(input_dim=adapter.pooled_width, num_labels=len(EMOTION6)))
        self.head = head.to(self.device).eval()
        self.gate = Gate(GateConfig(num_labels=len(EMOTION6))).to(self.device).eval()
        self.pipeline = EmoVLMKD(adapter, self.head, self.gate, EMOTION6)
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

    Each ratio comes from timings taken in pairs (see `paired_ratio`); the batch sweep, its
    sizes timed in turn (`interleaved_medians`), picks our best batch size and gives the
    `ours_batch{size}` times, so the best is the least of them. The pairings' own times of
    ours are kept apart (`paired_ours_batch{size}`), not mixed into the sweep's.
    `batch_scaling` is ours at the largest batch size over ours at the best one, per image
    (`batch_scaling_pairs`): above 1, large batches cost each image more.
    """

    def reference(batch):
        for image in batch:
            models.reference_predict(image)

    def floor(batch):
        models.bare_forward(batch)

    ours = models.pipeline.predict_images
    count, repeats = len(images), config.repeats
    sweep = {size: _over(ours, _batches(images, size)) for size in config.batch_sizes}
    per_image = {f"ours_batch{size}": seconds / count for size, seconds in interleaved_medians(sweep, repeats).items()}
    best = min(config.batch_sizes, key=lambda b: per_image[f"ours_batch{b}"])
    per_repeat = {}  # each figure's ratio in every repeat: the spread its median comes from
    speedup1, per_image["reference_batch1"], per_image["paired_ours_batch1"], per_repeat["inference_speedup_batch1"] = (
        paired_ratio(reference, ours, _batches(images, 1), repeats, every_ratio=True))
    speedup, _, per_image[f"paired_ours_batch{best}"], per_repeat["inference_speedup_batched"] = paired_ratio(
        reference, ours, _batches(images, best), repeats, every_ratio=True)
    floor_ratio, _, per_image[f"floor_batch{best}"], per_repeat["floor_ratio"] = paired_ratio(
        ours, floor, _batches(images, best), repeats, every_ratio=True)
    largest = max(config.batch_sizes)
    scaling = 1.0
    if best != largest:  # the same images both ways: whole, and in batches of the best size
        scaling, _, _, per_repeat["batch_scaling"] = batch_scaling_pairs(ours, images, largest, best, repeats)
    return {
        "per_repeat": per_repeat,
        "seconds_per_image": per_image,
        "best_batch_size": best,
        "images_per_second_best": 1 / per_image[f"ours_batch{best}"],
        "inference_speedup_batch1": speedup1,
        "inference_speedup_batched": speedup,
        "floor_ratio": floor_ratio,
        "batch_scaling": scaling,
    }


def utilisation_figures(models: Models, config: BenchConfig, result: dict) -> dict:
    """Images per second at each batch size, and the model FLOPs utilisation they imply.

    FLOPs per image are those `evaluate --efficiency` counts for the same model and workload
    (`analysis.cost`: the image, the Emotion6 prompt and its labels scored in one pass). The
    count is for Qwen2-VL's architecture; for another family only images per second are given.
    """
    from emovlm_kd.analysis.cost import qwen2_vl_flops, workload_for

    per_image = result["seconds_per_image"]
    sizes = sorted(int(key.removeprefix("ours_batch")) for key in per_image if key.startswith("ours_batch"))
    figures = {"images_per_second": {str(size): 1 / per_image[f"ours_batch{size}"] for size in sizes}}
    if models.adapter.family != "qwen2_vl":
        return {"utilisation": figures}
    workload = workload_for(models.adapter, models.taxonomy, image_size=BENCH_IMAGE_SIZE)
    flops = sum(qwen2_vl_flops(models.adapter.model, workload).values())
    peak, source = config.peak_tflops, "--peak-tflops" if config.peak_tflops else None
    if peak is None and models.device.type == "cuda" and models.dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(models.device)
        peak, source = next(((value, f"{key} data sheet, dense bf16") for key, value in PEAK_BF16_TFLOPS.items()
                             if key in name), (None, None))
    achieved = {size: rate * flops / 1e12 for size, rate in figures["images_per_second"].items()}
    figures.update(gflops_per_image=flops / 1e9, achieved_tflops=achieved, peak_tflops=peak, peak_source=source)
    if peak:
        figures["mfu"] = {size: value / peak for size, value in achieved.items()}
    return {"utilisation": figures}


def predict_figures(models: Models, config: BenchConfig, batch_size: int) -> dict:
    """`predict` end to end against the model alone, at our best batch size.

    `predict` reads JPEGs of mixed sizes from disk and decodes them in worker threads while
    the model runs; the model alone gets the same images decoded beforehand. Their ratio is
    what reading and decoding still cost once overlapped (1.0: nothing). The two ways
    alternate, run by run (`paired_ratio`), and every run's ratio is kept.
    """
    import os
    import tempfile

    from emovlm_kd.run_folder import load_rgb

    workers = min(4, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        paths = bench_jpegs(folder, config.predict_images, config.seed)
        decoded = dict(zip(paths, (load_rgb(path) for path in paths)))

        def end_to_end(files):
            list(models.pipeline.predict_paths(files, batch_size=batch_size, workers=workers))

        def model_only(files):
            _over(models.pipeline.predict_images, _batches([decoded[path] for path in files], batch_size))()

        ratio, predict_seconds, model_seconds, ratios = paired_ratio(end_to_end, model_only, [paths], config.repeats,
                                                                     every_ratio=True)
    return {
        "predict": {"images": config.predict_images, "batch_size": batch_size, "workers": workers,
                    "model_images_per_second": 1 / model_seconds, "predict_images_per_second": 1 / predict_seconds,
                    "ratio_per_repeat": ratios},
        "predict_end_to_end_ratio": ratio,
    }


def batch_scaling_pairs(predict, images: list, whole: int, split: int, repeats: int) -> tuple:
    """`predict` on the images in batches of `whole` against the same images in batches of
    `split`, timed in pairs: `paired_ratio`'s figures with every repeat's ratio."""
    return paired_ratio(predict, lambda batch: _over(predict, _batches(batch, split))(), _batches(images, whole),
                        repeats, every_ratio=True)


def _batches(images: list, size: int) -> list[list]:
    return [images[start : start + size] for start in range(0, len(images), size)]


def _over(function, batches: list[list]):
    """One call that runs `function` on every batch in turn."""
    return lambda: [function(batch) for batch in batches]


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
        optimizer = torch.optim.Adam(head.parameters(), lr=head_config.lr)
        for _ in range(HEAD_EPOCHS):  # features and teacher logits recomputed each epoch
            for index, image in enumerate(images):
                with torch.no_grad():
                    pooled = models.adapter.visual_tokens(models.adapter.encode_images([image])).pooled()
                    teacher = models.teacher_logits([image])
                loss = distillation_loss(head(pooled), teacher, labels[index : index + 1], head_config.alpha,
                                         head_config.temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        head.eval()
        gate = models.gate.train()
        optimizer = torch.optim.Adam(gate.parameters(), lr=gate_config.lr)
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
    reference_seconds = elapsed(reference)
    ours_seconds = elapsed(ours)
    return {
        "train_images": len(images),
        "reference_seconds": reference_seconds,
        "ours_seconds": ours_seconds,
        "stage23_train_speedup": reference_seconds / ours_seconds,
    }


def memory_figures(models: Models, images: list[Image.Image], config: BenchConfig) -> dict:
    """Peak memory of EmoVLM-KD classifying one batch against the VLM and the teacher deployed
    together: each deployment's weights plus the peak of the tensors the batch allocates
    (the CUDA allocator's on a GPU, torch's profiler's on a CPU; see `analysis.measure`)."""
    batch = images[: max(config.batch_sizes)]
    vlm = models.adapter.model

    @torch.no_grad()
    def emovlm_kd():
        # The batch taken whole, as the alternative takes it (no CPU chunks): the figure
        # compares one model with two, not batch sizes.
        cache, models.pipeline.cpu_cache_bytes = models.pipeline.cpu_cache_bytes, None
        try:
            models.pipeline.predict_images(batch)
        finally:
            models.pipeline.cpu_cache_bytes = cache

    @torch.no_grad()
    def dual():
        inputs = models.adapter.encode(batch, [models.prompt] * len(batch))
        models.adapter.answer_logprobs(inputs, models.answers, include_shared=False).softmax(-1)
        models.teacher_logits(batch).softmax(-1)

    # What each deployment holds: EmoVLM-KD is the VLM with the head and the gate; the
    # alternative is the VLM and the teacher side by side.
    deployments = {"emovlm_kd": (emovlm_kd, [vlm, models.head, models.gate]), "dual": (dual, [vlm, models.teacher])}
    peaks = {}
    for name, (function, modules) in deployments.items():
        memory = deployment_memory(function, modules, models.device)
        peaks[name] = memory["weights_mib"] + memory["activations_mib"]
    vlm_params = count_parameters(vlm)
    overhead = count_parameters(models.head) + count_parameters(models.gate)
    return {
        "peak_memory_mb": peaks,
        "peak_memory_kind": f"weights + peak tensor allocation ({memory_method(models.device)})",
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
    config = replace(config, threads=config.threads or torch.get_num_threads())
    torch.set_num_threads(config.threads)
    device = resolved_device(config)
    models = Models(config.preset, config.seed, device=device, dtype=INFERENCE_DTYPES[config.dtype])
    images = bench_images(config.images, config.seed)
    parameters = count_parameters(models.adapter.model)
    progress(f"bench: {config.preset} preset, {parameters / 1e6:,.0f}M parameters on {device} ({models.dtype}), "
             f"{config.images} images, {config.repeats} repeats, {config.threads} CPU threads")
    result = {"config": asdict(config), "machine": _machine(device, models.dtype)}
    parts = (("inference", lambda: inference_figures(models, images, config)),
             ("utilisation", lambda: utilisation_figures(models, config, result)),
             ("stage 2+3 training", lambda: training_figures(models, images[: config.train_images], config)),
             ("memory", lambda: memory_figures(models, images, config)),
             ("predict from disk", lambda: predict_figures(models, config, result["best_batch_size"])))
    parts += optional_parts(models, images, config, result)
    # Last: it adds a LoRA adapter to the VLM for its timing (removed after).
    parts += (("instruction tuning", lambda: instruct_figures(models, images[: config.instruct_images])),)
    for name, measure in parts:
        progress(f"bench: {name} ...")
        result.update(measure())
        result["targets"] = {key: _target(result, key, op, value) for key, (op, value) in TARGETS.items()
                             if key in result}
        if checkpoint is not None:
            checkpoint(result)
    return result


def optional_parts(models: Models, images: list[Image.Image], config: BenchConfig, result: dict) -> tuple:
    """The parts asked for by flag, each at the best batch size found by the inference part."""
    from emovlm_kd.apps.bench.profile import profile_figures
    from emovlm_kd.apps.bench.serve import serve_figures

    parts = {"profile": (config.profile, lambda: {"profile": profile_figures(models, images, result["best_batch_size"])}),
             "serve": (config.serve, lambda: serve_figures(models, images, config, result["best_batch_size"]))}
    return tuple((name, measure) for name, (wanted, measure) in parts.items() if wanted)


def _machine(device: torch.device, dtype: torch.dtype) -> dict:
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "device": device.type, "dtype": str(dtype)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def _target(result: dict, key: str, op: str, value: float) -> dict:
    """Whether the figure meets its target, and for a figure timed in repeats, in how many."""
    target = {"target": f"{op} {value}", "met": _meets(result[key], op, value)}
    if key in result.get("per_repeat", {}):
        target["repeats_met"] = sum(_meets(ratio, op, value) for ratio in result["per_repeat"][key])
    return target


def _meets(value: float, op: str, target: float) -> bool:
    return value >= target if op == ">=" else value <= target
