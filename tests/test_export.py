"""`emovlm-kd export`: a run as one folder to share, which predicts exactly what the run does."""

import shutil

import pytest
import torch
import yaml

from emovlm_kd import EmoVLMKD
from emovlm_kd.analysis.evaluation import MODELS
from emovlm_kd.apps.cli import main
from emovlm_kd.apps.export import export_run, shareable_config
from emovlm_kd.errors import UserError
from emovlm_kd.io import read_json, write_json
from emovlm_kd.run_folder import RunFolder

# Merging a LoRA adapter into the base is what loading a LoRA run does already (in fp32
# here), so the merged export holds the weights the run predicts with: measured 0.0 on the
# rounded probabilities. The bound leaves room for a machine whose kernels sum differently.
MERGED_TOLERANCE = 1e-4


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_one_sentence(err: str, *words: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and err.rstrip().endswith("."), err
    assert all(word in err for word in words), err


@pytest.fixture(scope="module")
def images(sample_root):
    """Six test images, one of each class's first."""
    folders = sorted(p for p in (sample_root / "test").iterdir() if p.is_dir())
    return [sorted(folder.glob("*.png"))[0] for folder in folders]


def probabilities(model: EmoVLMKD, images) -> torch.Tensor:
    """[N, 3K]: the fused, VLM and head probabilities of each image."""
    rows = [[*p.probs.values(), *p.vlm.values(), *p.head.values()] for p in model.predict_paths(images)]
    return torch.tensor(rows, dtype=torch.float64)


def largest_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    return float((first - second).abs().max())


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "emovlm-kd-tiny"
    export_run(trained[0], out, license="apache-2.0")
    return out


@pytest.fixture(scope="module")
def lora_run(trained, tmp_path_factory):
    """The trained run with its tuned VLM replaced by a LoRA adapter over the same base (random,
    non-zero B matrices: the adapter changes the scores), with no teacher and no test metrics."""
    from emovlm_kd.models.registry import load_vlm
    from emovlm_kd.stages.instruct import apply_lora

    run_dir, config, _ = trained
    copy = tmp_path_factory.mktemp("lora") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("teacher", "instruct", "logs"))
    (copy / "metrics.json").unlink()
    torch.manual_seed(0)  # the A matrices' initialisation
    tuned = apply_lora(load_vlm(RunFolder.open(copy).preset, seed=config.seed), config.instruct, quantized=False)
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.normal_(std=0.05)
    tuned.save_pretrained(copy / "instruct" / "adapter")
    write_json(copy / "instruct" / "metrics.json", {"method": "lora"})
    return copy


def test_the_export_is_a_run_folder_without_teacher_or_local_paths(trained, exported):
    run_dir, config, _ = trained
    assert {p.name for p in exported.iterdir()} == {
        "config.yaml", "labels.json", "metrics.json", "README.md", "instruct", "distill", "gate"}
    assert read_json(exported / "labels.json") == read_json(run_dir / "labels.json")
    run = RunFolder.open(exported)
    assert all(run.is_done(stage) for stage in ("instruct", "distill", "gate"))
    saved = (exported / "config.yaml").read_text()
    assert str(run_dir.parent) not in saved and str(config.data.root) not in saved
    assert run.config.cache_dir is None and run.config.data.root == "small.jsonl"
    assert run.config.distill == config.distill and run.config.preset == config.preset == "tiny"
    assert [p for p in exported.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")] == []


def test_the_export_predicts_what_the_run_predicts(model, exported, images):
    difference = largest_difference(probabilities(EmoVLMKD.from_pretrained(exported), images), probabilities(model, images))
    assert difference <= 1e-5


def test_predict_on_the_exported_folder(trained, exported, images, capsys):
    code, from_run, _ = cli(capsys, "predict", "--run", trained[0], *images, "--format", "json")
    assert code == 0
    code, from_export, _ = cli(capsys, "predict", "--run", exported, *images, "--format", "json")
    assert code == 0 and from_export == from_run and len(from_export.splitlines()) == len(images)


def test_the_model_card_says_what_the_model_is_and_how_it_scored(trained, exported):
    from huggingface_hub import ModelCard

    _, _, metrics = trained
    text = (exported / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "emovlm-kd" and front["license"] == "apache-2.0"
    assert "emovlm-kd" in front["tags"] and "base_model" not in front  # an offline preset: no hub base
    assert ModelCard(text).data.library_name == "emovlm-kd"
    assert all(f". {label}\n" in text for label in metrics["labels"])
    for name in MODELS:
        low, high = metrics[name]["ci95"]["accuracy"]
        assert f"{100 * metrics[name]['accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]" in text
    paired = metrics["paired"]["emovlm_kd_minus_vlm"]["accuracy"]
    assert f"{100 * paired['difference']:+.1f} points accuracy" in text
    assert f"{metrics['images']} images" in text and "95%" in text
    for usage in (f'EmoVLMKD.from_pretrained("{exported}")', f"predict --run {exported}", f"serve --run {exported}"):
        assert usage in text
    assert "not meant for real use" in text and "Intended use and limits" in text


def test_a_lora_run_exports_its_adapter_or_merged_weights(lora_run, images, tmp_path, capsys):
    expected = probabilities(EmoVLMKD.from_pretrained(lora_run), images)
    code, out, _ = cli(capsys, "export", "--run", lora_run, "--out", tmp_path / "adapter")
    assert code == 0 and "exported" in out
    assert (tmp_path / "adapter" / "instruct" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "instruct" / "model").exists()
    assert largest_difference(probabilities(EmoVLMKD.from_pretrained(tmp_path / "adapter"), images), expected) <= 1e-5

    code, _, _ = cli(capsys, "export", "--run", lora_run, "--out", tmp_path / "merged", "--merge")
    assert code == 0
    assert (tmp_path / "merged" / "instruct" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "instruct" / "adapter").exists()
    merged = probabilities(EmoVLMKD.from_pretrained(tmp_path / "merged"), images)
    print(f"merged export: largest probability difference {largest_difference(merged, expected):.2e}")
    assert largest_difference(merged, expected) <= MERGED_TOLERANCE
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "(lora; saved as full weights)" in card and "not evaluated" in card


def test_a_qlora_run_is_exported_for_four_bit_loading_and_never_merged(lora_run, tmp_path, capsys):

    qlora = tmp_path / "qlora"
    shutil.copytree(lora_run, qlora)
    write_json(qlora / "instruct" / "metrics.json", {"method": "qlora"})
    code, _, err = cli(capsys, "export", "--run", qlora, "--out", tmp_path / "merged", "--merge")
    assert code == 1 and not (tmp_path / "merged").exists()
    assert_one_sentence(err, "QLoRA", "without --merge")
    code, _, _ = cli(capsys, "export", "--run", qlora, "--out", tmp_path / "out")
    assert code == 0 and RunFolder.open(tmp_path / "out").tuned_loading() == {"quantize_4bit": True, "merge": False}
    adapter = "instruct/adapter/adapter_model.safetensors"
    assert (tmp_path / "out" / adapter).read_bytes() == (qlora / adapter).read_bytes()
    assert "bitsandbytes" in (tmp_path / "out" / "README.md").read_text()


def test_what_cannot_be_exported_ends_in_one_sentence(trained, tmp_path, capsys):
    run_dir = trained[0]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("teacher", "instruct", "logs"))
    (unfinished / "gate" / "metrics.json").unlink()
    code, _, err = cli(capsys, "export", "--run", unfinished, "--out", tmp_path / "out")
    assert code == 1 and not (tmp_path / "out").exists()
    assert_one_sentence(err, "instruct stage", "has not finished", "emovlm-kd train")
    (unfinished / "instruct").symlink_to(run_dir / "instruct", target_is_directory=True)
    code, _, err = cli(capsys, "export", "--run", unfinished, "--out", tmp_path / "out")
    assert code == 1 and not (tmp_path / "out").exists()
    assert_one_sentence(err, "gate stage", "has not finished")
    code, _, err = cli(capsys, "export", "--run", run_dir, "--out", tmp_path)
    assert code == 1
    assert_one_sentence(err, "not empty")
    code, _, err = cli(capsys, "export", "--run", run_dir, "--out", run_dir.parent)
    assert code == 1
    assert_one_sentence(err, "holds the run")
    code, _, err = cli(capsys, "export", "--run", run_dir, "--out", tmp_path / "out", "--push-to-hub", "a/b/c")
    assert code == 2 and not (tmp_path / "out").exists()
    assert_one_sentence(err, "not a Hugging Face Hub model id")


def test_a_local_base_model_needs_its_hub_id(trained, tmp_path):
    import dataclasses

    local = dataclasses.replace(trained[1], preset=str(tmp_path))
    with pytest.raises(UserError, match="--base-model"):
        shareable_config(local)
    assert shareable_config(local, base_model="Qwen/Qwen2-VL-2B-Instruct").preset == "Qwen/Qwen2-VL-2B-Instruct"


def test_an_interrupted_export_leaves_nothing(trained, tmp_path, monkeypatch):
    import emovlm_kd.apps.export as export

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing the card")

    monkeypatch.setattr(export, "model_card", crash)
    with pytest.raises(RuntimeError):
        export_run(trained[0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_an_upload_that_fails_keeps_the_export_and_says_how_to_upload(trained, tmp_path, capsys):
    # HF_HUB_OFFLINE=1 (conftest): the upload fails at once, as without network.
    code, _, err = cli(capsys, "export", "--run", trained[0], "--out", tmp_path / "out", "--push-to-hub", "you/emovlm-kd-tiny")
    assert code == 1
    assert_one_sentence(err, "is exported", "hf upload you/emovlm-kd-tiny")
    assert 'EmoVLMKD.from_pretrained("you/emovlm-kd-tiny")' in (tmp_path / "out" / "README.md").read_text()
    assert RunFolder.open(tmp_path / "out").is_done("gate")


def test_a_hub_id_that_cannot_be_downloaded_ends_in_one_sentence(sample_root, capsys):
    with pytest.raises(UserError, match="Hugging Face Hub") as error:
        EmoVLMKD.from_pretrained("someone/emovlm-kd-not-here")
    assert str(error.value).count(". ") == 0 and "HF_HUB_OFFLINE" in str(error.value)
    image = next((sample_root / "test").rglob("*.png"))
    code, _, err = cli(capsys, "predict", "--run", "someone/emovlm-kd-not-here", image)
    assert code == 1
    assert_one_sentence(err, "no folder here")
