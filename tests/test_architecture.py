"""The import graph of src/, read from the source (imports inside functions count too):
layers point one way, apps -> analysis -> stages -> models -> helpers, and nothing cycles."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "emovlm_kd"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path, node: ast.AST) -> list[str]:
    """The dotted names an import statement reaches: module names, or module.attribute."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, for every module under src/emovlm_kd."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in imported_names(module, path, node):
                # `from package import name` names a module, or something inside the package.
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that ends where it starts), or None."""
    state: dict[str, str] = {}  # visiting / done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "visiting"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "visiting":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def layer(module: str) -> str:
    """apps, analysis, stages, models, data, annotate, or helpers (the modules at the root)."""
    parts = module.split(".")
    if module == f"{PACKAGE}.__main__":  # `python -m emovlm_kd`: the command line
        return "apps"
    if len(parts) > 2 or (len(parts) == 2 and (SOURCE / PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "helpers"


GRAPH = import_graph()
# Which layers each layer may not import.
FORBIDDEN = {
    "models": {"stages", "analysis", "apps"},
    "data": {"stages", "analysis", "apps"},
    "helpers": {"stages", "analysis", "apps"},
    "annotate": {"stages", "analysis", "apps"},
    "stages": {"analysis", "apps"},
    "analysis": {"apps"},
}


def test_the_graph_is_read_from_the_source():
    # A reader that found nothing would pass every rule below.
    assert len(GRAPH) > 60
    assert f"{PACKAGE}.models.registry" in GRAPH[f"{PACKAGE}.run_folder"]
    assert f"{PACKAGE}.models.tuned" in GRAPH[f"{PACKAGE}.run_folder"]
    assert {"apps", "analysis", "stages", "models", "data", "helpers"} <= {layer(module) for module in GRAPH}


def test_the_checks_catch_a_cycle_and_a_backward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer(f"{PACKAGE}.models.vlm.base") == "models" and layer(f"{PACKAGE}.run_folder") == "helpers"


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None


@pytest.mark.parametrize("low", sorted(FORBIDDEN))
def test_layers_import_downward_only(low):
    backward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if layer(module) == low
        for target in targets
        if layer(target) in FORBIDDEN[low]
    )
    assert backward == []


def test_no_stage_imports_another_stage():
    from emovlm_kd.stages.registry import STAGES

    stages = {f"{PACKAGE}.stages.{stage.module}" for stage in STAGES}
    assert all(module in GRAPH for module in stages)
    crossing = sorted(f"{module} -> {target}" for module in stages for target in GRAPH[module] & stages)
    assert crossing == []
