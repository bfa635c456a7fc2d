"""Choose the demo's gate settings on val, by cross-validation with folds grouped by face.

The sample's val split is 72 drawings of 12 faces. Random folds would put drawings of one
face on both sides, so they reward a gate that memorises faces; grouped folds ask what the
test asks, a face the gate has not seen. Nothing of the test split is read.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/choose_demo_gate.py runs/demo
"""

import dataclasses
import itertools
import json
import sys
from pathlib import Path

import torch

from emovlm_kd.analysis.ablation import cached_tensors
from emovlm_kd.models.head import DistillHead
from emovlm_kd.run_folder import RunFolder
from emovlm_kd.stages.gate import train_gate_module
from emovlm_kd.stages.tensor_training import accuracy

FOLDS = 6
# (variant, lr, epochs, weight decay toward the start); epochs 0 is the untrained gate, the
# product of the two experts.
SETTINGS = [("concat_linear", 0.0, 0, 0.0)] + list(
    itertools.product(["concat_linear", "dynamic"], [1e-3, 1e-2, 3e-2], [10, 30, 100], [1e-4, 1e-2, 1e-1, 1.0])
)


def face_folds(run: RunFolder) -> torch.Tensor:
    """[N] fold of each val image: faces (code points) dealt round-robin to the folds."""
    root = Path(run.config.data.root)
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    face = {(root / record["image"]).resolve(): record["codepoint"] for record in records}
    faces = [face[Path(sample.path).resolve()] for sample in run.dataset.splits["val"]]
    fold_of = {code: index % FOLDS for index, code in enumerate(sorted(set(faces)))}
    return torch.tensor([fold_of[code] for code in faces])


def main(run_dir: str) -> None:
    run = RunFolder.open(run_dir)
    val = cached_tensors(run).splits["val"]
    head = DistillHead.from_pretrained(run.require("distill")).eval()
    with torch.no_grad():
        head_logits = head(val.features)
    folds = face_folds(run)
    print(f"val: {len(val.labels)} images, {FOLDS} folds grouped by face; head alone "
          f"{accuracy(head_logits, val.labels):.3f}")
    for variant, lr, epochs, decay in SETTINGS:
        config = dataclasses.replace(run.config.gate, variant=variant, lr=lr, epochs=epochs, weight_decay=decay)
        correct = 0
        for fold in range(FOLDS):
            fit, held = folds != fold, folds == fold
            gate, _ = train_gate_module(head_logits[fit], val.vlm_logprobs[fit], val.labels[fit], config,
                                        head_logits.shape[1], run.config.seed)
            with torch.no_grad():
                fused = gate(head_logits[held], val.vlm_logprobs[held])
            correct += int((fused.argmax(-1) == val.labels[held]).sum())
        print(f"{variant:13s} lr {lr:<6g} epochs {epochs:3d} weight_decay {decay:<6g}: grouped cross-validated "
              f"accuracy {correct / len(val.labels):.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
