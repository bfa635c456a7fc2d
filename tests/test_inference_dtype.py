"""A trained run predicts in bf16 on request: the same model in lower precision."""

import json

import pytest
import torch

from emovlm_kd.apps.cli import main
from emovlm_kd.apps.cli.flags import inference_dtype

LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


def predict_json(capsys, run_dir, images, *flags) -> list[dict]:
    code = main(["predict", "--run", str(run_dir), "--format", "json", *flags, *map(str, images)])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    return [json.loads(line) for line in out.splitlines()]


def test_bf16_predictions_are_the_float32_ones_to_bf16_precision(trained, sample_root, capsys):
    run_dir = trained[0]
    images = sorted(path for path in (sample_root / "test").rglob("*") if path.is_file())[:8]
    exact = predict_json(capsys, run_dir, images)
    assert predict_json(capsys, run_dir, images, "--dtype", "float32") == exact
    low = predict_json(capsys, run_dir, images, "--dtype", "bfloat16")
    assert [row["image"] for row in low] == [row["image"] for row in exact]
    gaps = [abs(a[part][label] - b[part][label]) for a, b in zip(exact, low) for part in ("probs", "vlm", "head")
            for label in LABELS]
    # It ran in bf16 (the scores moved), and it is the same model to bf16's precision (on the
    # demo's 120 test images: the same labels, probabilities within 0.06).
    assert 0 < max(gaps) < 0.01, max(gaps)


def test_the_vlm_runs_in_the_asked_precision_and_head_and_gate_stay_float32(trained):
    from emovlm_kd import EmoVLMKD

    model = EmoVLMKD.from_pretrained(trained[0], dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in model.adapter.model.parameters()} == {torch.bfloat16}
    assert {parameter.dtype for parameter in [*model.head.parameters(), *model.gate.parameters()]} == {torch.float32}


def test_emulated_bf16_is_named(monkeypatch, capsys):
    monkeypatch.setattr("emovlm_kd.models.registry.native_cpu_bf16", lambda: False)
    assert inference_dtype("bfloat16") is torch.bfloat16
    assert "runs emulated" in capsys.readouterr().err
    assert inference_dtype("auto") is None and inference_dtype("float32") is torch.float32
    assert capsys.readouterr().err == ""


def test_an_unknown_precision_is_refused_in_one_sentence(trained, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["predict", "--run", str(trained[0]), "--dtype", "float16", "x.jpg"])
    assert refused.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_predict_serve_and_bench_take_every_precision_the_registry_names():
    from emovlm_kd.apps.cli import build_parser
    from emovlm_kd.models.registry import INFERENCE_DTYPES

    parser = build_parser()
    for command in (["predict", "--run", "r", "x.jpg"], ["serve", "--run", "r"], ["bench"]):
        for name in INFERENCE_DTYPES:
            assert parser.parse_args([*command, "--dtype", name]).dtype == name
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--dtype", "float16"])
