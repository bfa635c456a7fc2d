"""What EmoVLM-KD costs at the paper's scale: parameters and FLOPs per image.

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
(`VLMAdapter.answer_logprobs`); vocabulary logits, and the last layer's MLP, are computed only at
scored positions.
(The reference implementation samples free text instead.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from emovlm_kd.analysis.paper_results import PAPER_HEAD_SHARE
from emovlm_kd.models.configs import GateConfig, GateSettings, HeadConfig, HeadSettings
from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.models.published_configs import (
    PAPER_TEACHER_NAME,
    PAPER_VLM_NAME,
    QWEN2_VL_7B_VISION,
    paper_teacher,
    paper_vlm,
)


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
    text_tokens, _ = adapter.token_counts(inputs)
    prompt_tokens = int(text_tokens[0])
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
    logit_positions = workload.shared_answer_tokens + 1 + workload.scored_positions
    # The last layer's MLP runs on the scored positions only (their logits are all it feeds).
    language_linear = sequence * linear_macs(language.layers) - (sequence - logit_positions) * linear_macs(
        language.layers[-1].mlp)
    language_attention = text_config.num_hidden_layers * 2 * query_width * sequence * sequence
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


def paper_scale(workload: Workload = Workload(), head_settings: HeadSettings = HeadSettings(),
                gate_settings: GateSettings = GateSettings()) -> dict:
    """Parameters and FLOPs per image of the paper's models, deployed three ways (head and
    gate as their settings say: the paper's by default)."""
    from emovlm_kd.models.gate import Gate
    from emovlm_kd.models.head import DistillHead

    vlm = paper_vlm()
    teacher = paper_teacher(workload.num_labels)
    hidden = vlm.config.get_text_config().hidden_size
    head = DistillHead(HeadConfig.shaped(head_settings, input_dim=hidden, num_labels=workload.num_labels))
    gate = Gate(GateConfig.shaped(gate_settings, num_labels=workload.num_labels))

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
        row("head", f"distilled head (depth {head_settings.depth})", head_params, head_flops, "EmoVLM-KD"),
        row("gate", f"gate ({gate_settings.variant})", gate_params, gate_flops, "EmoVLM-KD"),
    ]
    return {
        "workload": asdict(workload),
        "image_tokens": workload.patches(QWEN2_VL_7B_VISION["patch_size"]) // 4,
        "vlm_flops_by_part": {part: value / 1e9 for part, value in vlm_parts.items()},
        "rows": rows,
        "head_depth": head_settings.depth,
        "visual_width": hidden,
        "head_share_of_vlm": head_params / vlm_params,
        "paper_head_share": PAPER_HEAD_SHARE,
        "saved_vs_deploying_both": {
            "parameters": teacher_params - head_params - gate_params,
            "gflops": (teacher_flops - head_flops - gate_flops) / 1e9,
        },
    }
