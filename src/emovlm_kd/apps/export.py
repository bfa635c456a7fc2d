"""A finished run as one folder to share: the tuned VLM, head, gate, labels, config and a model card.

The folder is itself a run folder without the teacher (needed to train and evaluate, never
to predict), so `EmoVLMKD.from_pretrained`, `predict --run` and `serve --run` take it as
they take a run. Its config names no path of the machine it was exported on.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from emovlm_kd.apps.report.tables import format_table
from emovlm_kd.config import RunConfig
from emovlm_kd.errors import UserError
from emovlm_kd.io import atomic_dir, atomic_write_text, read_json, write_json
from emovlm_kd.models.registry import OFFLINE_PREFIX, PRESETS
from emovlm_kd.pipeline import is_hub_id
from emovlm_kd.run_folder import CONFIG_FILE, LABELS_FILE, RunFolder

log = logging.getLogger("emovlm_kd")

# What prediction reads; the teacher stays behind.
EXPORTED_STAGES = ("instruct", "distill", "gate")
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    merge: bool = False,
    base_model: str | None = None,
    license: str | None = None,
    hub_id: str | None = None,
) -> Path:
    """Write the finished run `run_dir` into the new folder `out` (whole, or not at all).

    `merge` folds a LoRA adapter into the base weights; `base_model` names the hub id of a
    base VLM the run loaded from a local folder; `license` and `hub_id` go into the card.
    """
    run = RunFolder.open(run_dir)
    out = Path(out)
    run.require(*EXPORTED_STAGES)
    _check_out(run, out)
    if merge and run.tuned_loading()["quantize_4bit"]:
        raise UserError(
            f"{run.directory} was tuned with QLoRA on the 4-bit base, so merging its adapter into the "
            "full-precision weights would give another model; export it without --merge."
        )
    config = shareable_config(run.config, base_model)
    metrics = run_metrics(run)
    with atomic_dir(out) as folder:
        _write_tuned_vlm(run, folder / "instruct", merge)
        for stage in ("distill", "gate"):
            shutil.copytree(run.stage_dir(stage), folder / stage)
        write_json(folder / LABELS_FILE, {"name": run.taxonomy.name, "labels": list(run.taxonomy.labels)})
        atomic_write_text(folder / CONFIG_FILE, config.to_yaml())
        if metrics is not None:
            write_json(folder / METRICS_FILE, metrics)
        exported = RunFolder(config, folder)
        atomic_write_text(folder / CARD_FILE, model_card(exported, metrics, license, hub_id or str(out)))
    return out


def check_hub_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would refuse, before any export work is done."""
    if not is_hub_id(repo_id):
        raise UserError(f"{repo_id!r} is not a Hugging Face Hub model id; give one like your-name/emovlm-kd-fi.", exit_code=2)


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the model repo `repo_id` (created if missing); returns its URL."""
    from huggingface_hub import create_repo, upload_folder

    try:
        url = create_repo(repo_id, private=private, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload an EmoVLM-KD model exported by emovlm-kd")
    except OSError as error:  # offline, not logged in, no rights, network: all OSErrors there
        raise UserError(
            f"{folder} is exported, but uploading it to {repo_id} failed ({type(error).__name__}); with the "
            f"network on and `hf auth login` done, upload it with `hf upload {repo_id} {folder}`."
        ) from None
    return str(url)


def _check_out(run: RunFolder, out: Path) -> None:
    """`out` is replaced whole, so it must be a new (or empty) folder that does not hold the run."""
    if run.directory.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out} holds the run {run.directory} itself; give a new folder for the export.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; give a new --out folder, or remove it first.")


def _write_tuned_vlm(run: RunFolder, folder: Path, merge: bool) -> None:
    source = run.stage_dir("instruct")
    if not (merge and (source / "adapter").is_dir()):
        if merge:
            log.info("export: %s holds full weights already; nothing to merge", source)
        shutil.copytree(source, folder)
        return
    # Merged as `RunFolder.load_tuned_vlm` merges a LoRA run for scoring, so the weights saved are the
    # ones the run itself predicts with (in this machine's dtype: fp32 on a CPU).
    tuned = run.load_tuned_vlm()
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("adapter"))
    tuned.model.save_pretrained(folder / "model")


def shareable_config(config: RunConfig, base_model: str | None = None) -> RunConfig:
    """`config` naming nothing on this machine: local paths (data, annotations, teacher) cut
    to their last part, so the card still says what was used; no cache folder.

    The base VLM must load anywhere, so a local folder needs `base_model`, its hub id.
    """
    preset = base_model or config.preset
    if preset not in PRESETS and _local_path(preset):
        raise UserError(
            f"the run's base VLM is the local folder {preset}, which the export could not load elsewhere; "
            "give its hub id with --base-model."
        )
    data = dataclasses.replace(config.data, root=_shared_name(config.data.root))
    instruct = dataclasses.replace(config.instruct, annotations=_shared_name(config.instruct.annotations))
    teacher = dataclasses.replace(config.teacher, model=_shared_name(config.teacher.model))
    return dataclasses.replace(config, preset=preset, cache_dir=None, data=data, instruct=instruct, teacher=teacher)


def _local_path(value: str | None) -> bool:
    return value is not None and (Path(value).is_absolute() or Path(value).exists())


def _shared_name(value: str | None) -> str | None:
    return Path(value).name if _local_path(value) else value


def run_metrics(run: RunFolder) -> dict | None:
    """The run's test metrics (written by `train`), or None where it was not evaluated."""
    path = run.directory / METRICS_FILE
    try:
        metrics = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        metrics = None  # unreadable: refused below, as a file that holds no object is
    if not isinstance(metrics, dict):
        raise UserError(f"{path} is damaged; rerun `emovlm-kd train --config {run.directory / CONFIG_FILE} "
                        f"--out {run.directory}` to evaluate the run and write it again.")
    return metrics


def model_card(run: RunFolder, metrics: dict | None, license: str | None, where: str) -> str:
    """The README.md the Hugging Face Hub shows: YAML metadata, then what the model is, its
    labels, training, evaluation, intended use and how to load it from `where`."""
    from huggingface_hub import ModelCardData

    method = run.stage_metrics("instruct").get("method", "unknown")
    vlm = run.preset.vlm
    card_data = ModelCardData(
        library_name="emovlm-kd",
        pipeline_tag="image-classification",
        tags=["emovlm-kd", "visual-emotion-analysis", "knowledge-distillation", "vision-language-model"],
        license=license,
        base_model=None if vlm.startswith(OFFLINE_PREFIX) else vlm,
    )
    sections = [
        _about(run, method, Path(where).name),
        _labels(run),
        _training(run),
        _evaluation(metrics),
        _intended_use(run, license),
        _loading(run, method, where),
    ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def _about(run: RunFolder, method: str, name: str) -> str:
    config = run.config
    saved = "full weights" if (run.stage_dir("instruct") / "model").is_dir() else "a LoRA adapter over the base weights"
    teacher = config.teacher.model or run.preset.teacher
    offline = (
        "\n\nIt was trained on the offline presets (randomly initialised language model): it shows "
        "the pipeline working and is not meant for real use."
        if run.preset.offline else ""
    )
    return (
        f"# EmoVLM-KD: {name}\n\n"
        "Visual emotion analysis with EmoVLM-KD (Lee, Lee & Park, CVPR 2025 workshops), trained and "
        "exported with emovlm-kd. Three parts answer together:\n\n"
        f"- the vision-language model `{run.preset.vlm}`, instruction-tuned ({method}; saved as {saved}), "
        "whose class probabilities are the likelihoods of each label's answer;\n"
        f"- a head of depth {config.distill.depth} reading the VLM's own visual features, distilled from "
        f"the image classifier `{teacher}` (α={config.distill.alpha}, T={config.distill.temperature});\n"
        f"- a `{config.gate.variant}` gate fusing the two.\n\n"
        "One visual-encoder pass per image feeds both the head and the VLM; the teacher is not part "
        "of the model." + offline
    )


def _labels(run: RunFolder) -> str:
    labels = "\n".join(f"{index}. {label}" for index, label in enumerate(run.taxonomy.labels))
    return f"## Labels\n\nTaxonomy `{run.taxonomy.name}`, in class-id order (also in `labels.json`):\n\n{labels}"


def _training(run: RunFolder) -> str:
    data = run.config.data
    examples = run.stage_metrics("instruct").get("examples", {})
    annotated = examples.get("observation", 0)
    return (
        "## Training data and settings\n\n"
        f"- Data: `{data.root}`" + (f" (dataset preset `{data.dataset}`)" if data.dataset else "") + ", "
        f"split with seed {data.split_seed}; the gate trained on the `{run.config.gate.split}` split.\n"
        f"- Instruction tuning: {examples.get('classification', 'an unrecorded number of')} training images"
        + (f", {annotated} with key-element and reasoning annotations.\n" if annotated else ", classification only.\n")
        + "- The resolved config (`config.yaml`; local paths cut to their names):\n\n"
        f"```yaml\n{run.config.to_yaml()}```"
    )


def _evaluation(metrics: dict | None) -> str:
    if metrics is None:
        return "## Evaluation\n\nThis run was not evaluated (it has no metrics.json), so no scores are given."
    where = metrics.get("dataset") or Path(str(metrics.get("data_root", "its data"))).name
    caveat = (
        "\n\nThe gate was trained on these images, so the gated scores are optimistic."
        if metrics.get("gate_saw_these_images") else ""
    )
    return (
        f"## Evaluation\n\nOn `{where}`: accuracy and macro-F1 with 95% bootstrap intervals over the images, "
        "the calibration error (ECE), and the gated model's gain with paired 95% intervals.\n\n"
        f"```\n{format_table(metrics)}\n```" + caveat
    )


def _intended_use(run: RunFolder, license: str | None) -> str:
    licensing = (
        f"The exporter licensed it as `{license}`" if license else "The exporter stated no license"
    ) + "; the base model's and the training data's licenses apply as well."
    return (
        "## Intended use and limits\n\n"
        f"It says which of the {len(run.taxonomy)} emotions above an image is most likely to evoke in a viewer, "
        "with probabilities: for research on images and for studying collections of them.\n\n"
        "- It answers with one of these labels only, whatever the image shows.\n"
        "- Its scores hold for images like its training data; others (another domain, style or culture) "
        "may be scored worse without warning.\n"
        "- It reads images, not people: do not use it to judge a person's feelings or to decide about people "
        "(hiring, school, policing, surveillance).\n"
        "- `--explain` sentences are generated text and may be wrong.\n"
        "- It carries the biases of its base model, teacher and training data.\n\n" + licensing
    )


def _loading(run: RunFolder, method: str, where: str) -> str:
    needs = (
        "a CUDA GPU with bitsandbytes: the adapter was tuned on the 4-bit base and is applied to it unmerged"
        if method == "qlora" else "a CPU or a GPU"
    )
    package = "emovlm-kd[offline]" if run.preset.offline else "emovlm-kd"
    base = "" if run.preset.offline else f" Loading fetches the base model `{run.preset.vlm}` from the Hub as well."
    return (
        "## How to load\n\n"
        f"With the `{package}` package installed; it runs on {needs}.{base} A hub id is downloaded first, "
        "a folder is read as it is.\n\n"
        "```python\nfrom emovlm_kd import EmoVLMKD\n\n"
        f'model = EmoVLMKD.from_pretrained("{where}")\n'
        'for p in model.predict_paths(["photo.jpg"]):\n    print(p.label, p.probs[p.label])\n```\n\n'
        "```bash\n"
        f"emovlm-kd predict --run {where} photo.jpg --format json\n"
        f"emovlm-kd serve --run {where}\n```"
    )
