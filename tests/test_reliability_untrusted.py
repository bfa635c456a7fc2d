"""Run folders, weights and caches are data, never code: only safetensors, JSON and YAML are
read, with safe loaders, and nothing planted in a run folder is unpickled or imported."""

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import tally

import emovlm_kd
from emovlm_kd.apps.cli import main
from emovlm_kd.errors import UserError
from emovlm_kd.models.gate import Gate
from emovlm_kd.models.head import DistillHead
from emovlm_kd.pipeline import EmoVLMKD
from emovlm_kd.run_folder import RunFolder

pytestmark = pytest.mark.reliability

SOURCE = Path(emovlm_kd.__file__).parent
PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "_pickle"}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_calls(tree: ast.AST, relative: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [f"{relative}: imports {name}" for name in names if name.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML:
            found.append(f"{relative}: {name} (use yaml.safe_load)")
        if name in ("eval", "exec", "torch.save", "torch.jit.load"):
            found.append(f"{relative}: {name}")
        allow_pickle = keywords.get("allow_pickle")
        if name in ("np.load", "numpy.load") and not (allow_pickle is None or getattr(allow_pickle, "value", True) is False):
            found.append(f"{relative}: {name} with allow_pickle")
        if name == "torch.load":
            weights_only = keywords.get("weights_only")
            allowed = relative == "models/teacher.py" and isinstance(weights_only, ast.Constant) and weights_only.value is True
            if not allowed:
                found.append(f"{relative}: torch.load without weights_only=True on the packaged EfficientNet file")
        trust = keywords.get("trust_remote_code")
        if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
            found.append(f"{relative}: trust_remote_code other than False")
    return found


def test_the_library_never_unpickles_or_runs_loaded_code():
    files = sorted(SOURCE.rglob("*.py"))
    problems = []
    torch_loads = 0
    for path in files:
        relative = path.relative_to(SOURCE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        problems += unsafe_calls(tree, relative)
        torch_loads += sum(isinstance(n, ast.Call) and dotted(n.func) == "torch.load" for n in ast.walk(tree))
    assert problems == []
    assert torch_loads <= 1  # the packaged EfficientNet-Lite0 weights, weights_only=True
    tally["inputs"] += len(files)


def test_the_scan_finds_what_it_looks_for():
    bad = "import pickle\nyaml.load(x)\ntorch.load(p)\nf(trust_remote_code=True)\neval(s)\nyaml.full_load(x)\n"
    assert len(unsafe_calls(ast.parse(bad), "x.py")) == 6
    assert unsafe_calls(ast.parse("yaml.safe_load(x)\nf(trust_remote_code=False)\n"), "x.py") == []


class Payload:
    """Unpickling this creates the folder `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


PLANTED = ("pytorch_model.bin", "training_args.bin", "model.pt", "optimizer.pt", "weights.pkl", "adapter_model.bin")


@pytest.fixture
def hostile_run(trained, tmp_path):
    """A copy of the trained run with a pickle under every name a loader might try, everywhere."""
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    marker = tmp_path / "pickle-was-loaded"
    payload = pickle.dumps(Payload(marker))
    folders = [copy, *(p for p in copy.rglob("*") if p.is_dir())]
    for folder in folders:
        for name in PLANTED:
            (folder / name).write_bytes(payload)
    tally["corruptions"] += len(folders) * len(PLANTED)
    tally["faults"] += len(folders) * len(PLANTED)
    return copy, marker


@pytest.fixture
def loads(monkeypatch):
    """Every torch.load / pickle.load(s) call, by its first argument."""
    calls = []
    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: calls.append(str(a[0])[:200]) or _real(*a, **k))
    return calls


def test_planted_pickles_are_never_loaded(hostile_run, loads, capsys, tmp_path, sample_root):
    run_dir, marker = hostile_run
    model = EmoVLMKD.from_pretrained(run_dir)
    image = min((sample_root / "test").rglob("*.png"))
    assert next(model.predict_paths([image])).label
    assert main(["evaluate", "--run", str(run_dir), "--out", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    assert loads == [] and not marker.exists()


@pytest.mark.parametrize("stage", ["teacher", "instruct", "distill", "gate"])
def test_pickles_in_place_of_safetensors_are_refused(hostile_run, loads, capsys, tmp_path, stage):
    run_dir, marker = hostile_run
    folder = run_dir / stage / ("model" if stage == "instruct" else "")
    (folder / "model.safetensors").unlink()
    command = ["evaluate", "--run", str(run_dir), "--out", str(tmp_path / "eval")]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"the {stage} stage of {run_dir} has a damaged or incomplete" in err and "Traceback" not in err
    assert loads == [] and not marker.exists()


def test_custom_code_in_a_run_folder_is_never_imported_nor_offered(trained, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    marker = tmp_path / "code-was-run"
    (copy / "teacher" / "evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((copy / "teacher" / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.Config", "AutoModelForImageClassification": "evil.Model"})
    (copy / "teacher" / "config.json").write_text(json.dumps(config))
    tally["corruptions"] += 1
    tally["faults"] += 1
    # transformers asks on the terminal before running custom code; we must never get there.
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run custom code"))
    assert main(["evaluate", "--run", str(copy), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "asking to run custom code (auto_map)" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_run_config_that_tries_to_run_code_is_refused(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    marker = tmp_path / "yaml-ran-code"
    (copy / "config.yaml").write_text(f"preset: !!python/object/apply:os.mkdir ['{marker}']\n")
    tally["corruptions"] += 1
    tally["faults"] += 1
    with pytest.raises(UserError, match="not valid YAML"):
        RunFolder.open(copy)
    with pytest.raises(UserError, match="not valid YAML"):
        EmoVLMKD.from_pretrained(copy)
    assert not marker.exists()


json_values = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=12) | st.lists(st.integers(), max_size=2)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    module=st.sampled_from([DistillHead, Gate]),
    edits=st.dictionaries(
        st.sampled_from(["class", "input_dim", "num_labels", "depth", "dropout", "variant", "num_experts", "extra"]),
        json_values,
        max_size=3,
    ),
)
def test_an_edited_module_config_loads_or_says_why(trained, tmp_path, module, edits):
    source = trained[0] / ("distill" if module is DistillHead else "gate")
    folder = tmp_path / module.__name__
    shutil.copytree(source, folder, dirs_exist_ok=True)
    config = json.loads((source / "config.json").read_text()) | edits
    (folder / "config.json").write_text(json.dumps(config))
    tally["inputs"] += 1
    try:
        module.from_pretrained(folder)
    except UserError as error:
        tally["rejected"] += 1
        assert str(error).endswith("train its stage again.")
    except Exception:
        tally["crashes"] += 1
        raise
