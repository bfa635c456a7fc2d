"""What EmoVLM-KD costs: parameters and FLOPs at the paper's scale, and measured latency.

Paper scale needs no weights: Qwen2-VL-7B-Instruct and ViT-B/16-384 are built from their
published config values on the meta device (shapes only, no memory), so parameter counts
are exact. FLOPs are counted analytically from those modules for a stated workload:
FLOPs = 2 x multiply-accumulates of every linear and convolution layer on the tokens that
go through it, plus attention (Q.K^T and attention-weights.V) counted dense, as torch's
FlopCounterMode does (a causal kernel skips about half of the language model's part).
Norms, activations, softmax and rotary embeddings are left out (well under 1%).

The VLM's workload is the one this project runs: the image and prompt are encoded once, the
answer start common to every label is scored with them, and every label's remaining answer
tokens follow in the same pass, side by side, each answer seeing only the prompt and itself
(`VLMAdapter.answer_logprobs`); vocabulary logits are computed only at scored positions.
(The reference implementation samples free text instead.)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.models.published_configs import (
    PAPER_TEACHER_NAME,
    PAPER_VLM_NAME,
    QWEN2_VL_7B_VISION,
    paper_teacher,
    paper_vlm,
)

# The share of the VLM's parameters the paper quotes for its head.
PAPER_HEAD_SHARE = 0.003 / 100


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, in their own dtypes."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def linear_macs(module: nn.Module) -> int:
    """Multiply-accumulates of every Linear / Bilinear inside `module`, for one input row."""
    total = 0
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            total += layer.in_features * layer.out_features
        elif isinstance(layer, nn.Bilinear):
            total += layer.in1_features * layer.in2_features * layer.out_features
    return total


@dataclass(frozen=True)
class Workload:
    """What classifying one image asks of the VLM.

    Defaults: a 448x448 image and the Mikels-8 prompt as the Qwen2 tokenizer splits it
    (`workload_for` measures them for another taxonomy or image size).
    """

    image_size: int = 448
    # Text tokens of the chat prompt: system message, question, chat markup.
    prompt_tokens: int = 74
    # Answer tokens every label shares ("{'emotion': '"), scored with the prompt.
    shared_answer_tokens: int = 4
    # The longest label-specific rest of an answer as scored (the label's tokens; the closing
    # "'}" only where labels need it to be told apart; the end-of-turn token never).
    answer_tokens: int = 3
    num_labels: int = 8
    # Answer tokens fed after the shared ones (each answer's own tokens but its last, summed
    # over labels): each predicts its answer's next token, so each also needs vocabulary logits.
    scored_positions: int = 8

    def patches(self, patch_size: int) -> int:
        # Qwen2-VL resizes each side to a multiple of patch x merge (28 px).
        side = max(1, round(self.image_size / (2 * patch_size))) * 2
        return side * side


def workload_for(adapter, taxonomy, image_size: int = 448) -> Workload:
    """The workload of `taxonomy`'s classification prompt under the adapter's own tokenizer."""
    from PIL import Image

    from emovlm_kd.prompts import classification_answer, classification_prompt

    inputs = adapter.encode([Image.new("RGB", (56, 56))], [classification_prompt(taxonomy)])
    prompt_tokens = int((inputs["mm_token_type_ids"] == 0).sum())
    answers, shared = adapter.scored_answer_ids([classification_answer(label) for label in taxonomy.labels])
    return Workload(
        image_size=image_size,
        prompt_tokens=prompt_tokens,
        shared_answer_tokens=shared,
        answer_tokens=max(len(ids) - shared for ids in answers),
        scored_positions=sum(len(ids) - shared - 1 for ids in answers),
        num_labels=len(taxonomy),
    )


def qwen2_vl_flops(model: nn.Module, workload: Workload) -> dict[str, int]:
    """FLOPs per image of a Qwen2-VL model on `workload`, by part (see the module docstring)."""
    vision_config = model.config.vision_config
    text_config = model.config.get_text_config()
    visual, language = model.model.visual, model.model.language_model

    patches = workload.patches(vision_config.patch_size)
    image_tokens = patches // vision_config.spatial_merge_size**2
    # Each patch's 3 x 2 x 14 x 14 pixels go through the patch embedding once.
    patch_embed = visual.patch_embed.proj.weight[0].numel() * visual.patch_embed.proj.out_channels
    vision_linear = patches * (patch_embed + linear_macs(visual.blocks)) + image_tokens * linear_macs(visual.merger)
    vision_attention = vision_config.depth * 2 * patches * patches * vision_config.embed_dim

    # One pass: image, prompt and shared answer tokens, then every answer's own tokens but
    # its last, side by side (`scored_positions` of them); attention counted dense over it all.
    prefix = image_tokens + workload.prompt_tokens + workload.shared_answer_tokens
    sequence = prefix + workload.scored_positions
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    query_width = text_config.num_attention_heads * head_dim
    language_linear = sequence * linear_macs(language.layers)
    language_attention = text_config.num_hidden_layers * 2 * query_width * sequence * sequence
    logit_positions = workload.shared_answer_tokens + 1 + workload.scored_positions
    lm_head = logit_positions * linear_macs(model.lm_head)

    macs = {
        "vision_linear": vision_linear,
        "vision_attention": vision_attention,
        "language_linear": language_linear,
        "language_attention": language_attention,
        "lm_head": lm_head,
    }
    return {part: 2 * value for part, value in macs.items()}


def vit_flops(model: nn.Module, image_size: int | None = None) -> dict[str, int]:
    """FLOPs per image of a transformers ViT classifier, by part."""
    config = model.config
    image_size = image_size or config.image_size
    patches = (image_size // config.patch_size) ** 2
    tokens = patches + 1  # and the class token
    projection = model.vit.embeddings.patch_embeddings.projection
    macs = {
        "linear": patches * projection.weight[0].numel() * projection.out_channels
        + tokens * linear_macs(model.vit)  # the encoder layers (no pooler in a classifier)
        + linear_macs(model.classifier),  # on the class token only
        "attention": config.num_hidden_layers * 2 * tokens * tokens * config.hidden_size,
    }
    return {part: 2 * value for part, value in macs.items()}


def paper_scale(workload: Workload = Workload(), head_depth: int = 1, gate_variant: str = "concat_linear") -> dict:
    """Parameters and FLOPs per image of the paper's models, deployed three ways."""
    from emovlm_kd.models.gate import Gate, GateConfig
    from emovlm_kd.models.head import DistillHead, HeadConfig

    vlm = paper_vlm()
    teacher = paper_teacher(workload.num_labels)
    hidden = vlm.config.get_text_config().hidden_size
    head = DistillHead(HeadConfig(input_dim=hidden, num_labels=workload.num_labels, depth=head_depth))
    gate = Gate(GateConfig(num_labels=workload.num_labels, variant=gate_variant))

    vlm_parts = qwen2_vl_flops(vlm, workload)
    vlm_flops = sum(vlm_parts.values())
    teacher_flops = sum(vit_flops(teacher).values())
    # The head reads the mean of the visual tokens the VLM computes anyway.
    head_flops = 2 * linear_macs(head) + hidden * workload.patches(QWEN2_VL_7B_VISION["patch_size"]) // 4
    gate_flops = 2 * linear_macs(gate)
    vlm_params, teacher_params = count_parameters(vlm), count_parameters(teacher)
    head_params, gate_params = count_parameters(head), count_parameters(gate)

    def row(key: str, name: str, parameters: int, flops: int, part_of: str | None = None) -> dict:
        return {
            "key": key,
            "name": name,
            "part_of": part_of,
            "parameters": parameters,
            "share_of_vlm": parameters / vlm_params,
            "gflops": flops / 1e9,
        }

    rows = [
        row("vlm", f"{PAPER_VLM_NAME} (VLM alone)", vlm_params, vlm_flops),
        row(
            "vision",
            "vision encoder",
            count_parameters(vlm.model.visual),
            vlm_parts["vision_linear"] + vlm_parts["vision_attention"],
            PAPER_VLM_NAME,
        ),
        row("teacher", f"{PAPER_TEACHER_NAME} teacher", teacher_params, teacher_flops),
        row(
            "vlm_and_teacher",
            f"VLM + {PAPER_TEACHER_NAME} deployed together",
            vlm_params + teacher_params,
            vlm_flops + teacher_flops,
        ),
        row(
            "emovlm_kd",
            "EmoVLM-KD (VLM + head + gate)",
            vlm_params + head_params + gate_params,
            vlm_flops + head_flops + gate_flops,
        ),
        row("head", f"distilled head (depth {head_depth})", head_params, head_flops, "EmoVLM-KD"),
        row("gate", f"gate ({gate_variant})", gate_params, gate_flops, "EmoVLM-KD"),
    ]
    return {
        "workload": asdict(workload),
        "image_tokens": workload.patches(QWEN2_VL_7B_VISION["patch_size"]) // 4,
        "vlm_flops_by_part": {part: value / 1e9 for part, value in vlm_parts.items()},
        "rows": rows,
        "head_depth": head_depth,
        "visual_width": hidden,
        "head_share_of_vlm": head_params / vlm_params,
        "paper_head_share": PAPER_HEAD_SHARE,
        "saved_vs_deploying_both": {
            "parameters": teacher_params - head_params - gate_params,
            "gflops": (teacher_flops - head_flops - gate_flops) / 1e9,
        },
    }


def paper_scale_notes(table: dict) -> list[str]:
    """The assumptions and the remarks that belong under the table, as sentences."""
    workload = table["workload"]
    saved = table["saved_vs_deploying_both"]
    both = next(row for row in table["rows"] if row["key"] == "vlm_and_teacher")
    return [
        f"FLOPs per image for a {workload['image_size']}x{workload['image_size']} image "
        f"({table['image_tokens']} visual tokens), a {workload['prompt_tokens']}-token prompt and "
        f"{workload['num_labels']} answers scored exactly in one pass; FLOPs = 2 x multiply-accumulates "
        "of linear and convolution layers plus dense attention; norms and activations left out.",
        f"The depth-{table['head_depth']} head is {100 * table['head_share_of_vlm']:.3f}% of the VLM's parameters; "
        f"the paper's {100 * table['paper_head_share']:.3f}% does not match a head with a 1024-wide hidden layer "
        f"on the {table['visual_width']}-dim visual tokens.",
        f"Against deploying the VLM and the ViT together, EmoVLM-KD saves {saved['parameters'] / 1e6:.1f}M parameters "
        f"({100 * saved['parameters'] / both['parameters']:.2f}%) and {saved['gflops']:.1f} GFLOPs per image "
        f"({100 * saved['gflops'] / both['gflops']:.2f}%).",
    ]


def format_count(count: int) -> str:
    """8291375616 -> '8.29B', 3679240 -> '3.68M', 136 -> '136'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def format_share(share: float) -> str:
    """1.0104 -> '101.04%', 0.000444 -> '0.04437%', 1.6e-8 -> '1.6e-06%'."""
    percent = 100 * share
    if percent >= 1:
        return f"{percent:.2f}%"
    return f"{percent:.4g}%" if percent >= 1e-3 else f"{percent:.1e}%"


def paper_scale_rows(table: dict) -> list[list[str]]:
    """The table as text cells: model, parameters, share of the VLM, GFLOPs per image."""
    return [
        [
            ("  of which: " if row["part_of"] else "") + row["name"],
            f"{format_count(row['parameters'])} ({row['parameters']:,})",
            format_share(row["share_of_vlm"]),
            f"{row['gflops']:,.2f}",
        ]
        for row in table["rows"]
    ]


PAPER_SCALE_HEADER = ["model", "parameters", "of the VLM", "GFLOPs / image"]


# ---- measured on the run's own models -----------------------------------------------------


def peak_allocation(function, item, device: torch.device) -> int:
    """Bytes `function(item)` allocates at its peak beyond what was allocated before it.

    On a GPU: the CUDA allocator's own statistics. On a CPU: torch's profiler records every
    allocation and free of each operator; the peak of their running sum, in time order.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function(item)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function(item)
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
def _quiet_stderr():
    # The profiler's native tracer prints start/stop lines straight to file descriptor 2.
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def median_latency(function, items: list, device: torch.device) -> float:
    """Median seconds of one `function(item)` call per item, after a warm-up call."""
    function(items[0])
    seconds = []
    for item in items:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function(item)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def run_efficiency(run, samples: list, images: int = 4, image_size: int = 448) -> dict:
    """The paper-scale table for the run's taxonomy, head and gate, and measurements of the
    run's own models on up to `images` of `samples`."""
    from emovlm_kd.pipeline import EmoVLMKD

    model = EmoVLMKD.from_pretrained(run.directory)
    workload = workload_for(model.adapter, model.taxonomy, image_size)
    return {
        "paper_scale": paper_scale(workload, model.head.config.depth, model.gate.config.variant),
        "measured": dict(measure_model(model, run, samples[:images]), preset=run.config.preset),
    }


def measure_model(model, run, samples: list) -> dict:
    """Latency per image (batch 1, median) and memory of a loaded EmoVLM-KD and the run's
    teacher, deployed three ways: the VLM alone, the VLM and the teacher, and EmoVLM-KD."""
    from emovlm_kd.models.teacher import load_teacher
    from emovlm_kd.run import load_rgb

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

    parts = {"vlm": adapter.model, "teacher": teacher, "head": model.head, "gate": model.gate}
    deployments = {
        "vlm": (vlm_alone, ("vlm",)),
        "vlm_and_teacher": (both, ("vlm", "teacher")),
        "emovlm_kd": (lambda image: model.predict_images([image]), ("vlm", "head", "gate")),
    }
    rows = {}
    for name, (function, used) in deployments.items():
        rows[name] = {
            "parameters": sum(count_parameters(parts[part]) for part in used),
            "weights_mib": sum(weight_bytes(parts[part]) for part in used) / 2**20,
            "latency_ms": 1000 * median_latency(function, pictures, device),
            "activations_mib": peak_allocation(function, pictures[0], device) / 2**20,
        }
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "images": len(pictures),
        "memory_method": "CUDA allocator peak"
        if device.type == "cuda"
        else "torch profiler, allocations in time order",
        "deployments": rows,
    }


MEASURED_TITLES = {"vlm": "VLM alone", "vlm_and_teacher": "VLM + teacher together", "emovlm_kd": "EmoVLM-KD"}


def measured_rows(measured: dict) -> list[list[str]]:
    rows = []
    for name, row in measured["deployments"].items():
        rows.append(
            [
                MEASURED_TITLES[name],
                format_count(row["parameters"]),
                f"{row['weights_mib']:.1f}",
                f"{row['activations_mib']:.1f}",
                f"{row['weights_mib'] + row['activations_mib']:.1f}",
                f"{row['latency_ms']:.1f}",
            ]
        )
    return rows


MEASURED_HEADER = ["deployment", "parameters", "weights MiB", "activations MiB", "peak MiB", "latency ms / image"]
