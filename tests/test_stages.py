"""The stages are thin and honest: each imports only the package, and dvc.yaml says what."""

import ast
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]

LOADED = """
import sys
from pathlib import Path
import stages.{name}
root = Path.cwd().resolve()
for module in list(sys.modules.values()):
    path = Path(getattr(module, "__file__", None) or "/").resolve()
    if path.is_relative_to(root) and path.suffix == ".py":
        print(path.relative_to(root))
"""


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.endswith(".py")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_are_exactly_the_project_modules_the_stage_imports(name):
    assert STAGES[name]["cmd"] == f"python -m stages.{name}"
    proc = subprocess.run(
        [sys.executable, "-c", LOADED.format(name=name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {line for line in proc.stdout.splitlines() if not line.startswith(".venv")}
    assert code_deps(STAGES[name]) == loaded


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_imports_the_package_and_never_another_stage(name):
    tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    }
    assert not {m for m in imported if m and m.split(".")[0] == "stages"}
    assert any(m and m.startswith("cali_reg") for m in imported)


def test_stages_holds_only_the_stages():
    assert {p.stem for p in (ROOT / "stages").glob("*.py")} == set(STAGES)


def test_no_stage_declares_a_param_it_does_not_read():
    """A stage's params are the sections it reads: those it validates with load_params, and
    those it quotes with read_params (the card), the single keys of load_param, and no
    others."""
    for name, stage in STAGES.items():
        source = (ROOT / "stages" / f"{name}.py").read_text()
        read = set()
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in ("load_params", "read_params")
                and isinstance(node.args[0], ast.Constant)
            ):
                read.add(node.args[0].value)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_param":
                read.add(f"{node.args[0].value}.{node.args[1].value}")  # one key of a section
        assert set(stage.get("params", [])) == read, name
