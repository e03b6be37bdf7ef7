"""The Docker image's recipe: what it copies is what the context allows, and that is enough.

Building the image needs a container engine (docs/docker.md); these tests check,
without one, that the package and files it ships serve predictions on their own.
"""

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers import ROOT, sh

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def copied_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            sources.extend(line.split()[1:-1])
    return sources


def allowed_in_context() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, ".dockerignore must start from an empty context"
    return [line[1:] for line in lines if line.startswith("!")]


def pin(text: str, package: str) -> str:
    found = re.findall(rf"^{package}==(\S+)", text, flags=re.M)
    return found[0] if len(found) == 1 else ""


def test_numpy_in_the_image_is_pinned_as_in_requirements():
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"numpy=={pin(requirements, 'numpy')}" in DOCKERFILE
    installs = " ".join(line for line in DOCKERFILE.splitlines() if "pip install" in line)
    assert "scikit-learn" not in installs and "requirements" not in installs


def test_the_context_holds_exactly_the_files_the_image_copies():
    allowed = allowed_in_context()
    for source in copied_sources():
        assert source in allowed or f"{source}/*.py" in allowed, source
    for entry in allowed:
        assert entry in copied_sources() or entry.split("/")[0] in copied_sources(), entry


@pytest.fixture(scope="module")
def image(built_repo, tmp_path_factory):
    """The image's contents, laid out by hand: a bare venv with numpy and the package, and /app."""
    import numpy

    root = tmp_path_factory.mktemp("image")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    site = next(env_dir.glob("lib/python*/site-packages"))
    numpy_dir = Path(numpy.__file__).parent
    for name in ("numpy", "numpy.libs"):  # numpy only: none of its neighbours
        if (numpy_dir.parent / name).exists():
            (site / name).symlink_to(numpy_dir.parent / name)
    shutil.copytree(
        ROOT / "cali_reg", site / "cali_reg", ignore=shutil.ignore_patterns("__pycache__")
    )
    app = root / "app"
    for rel in ("models/quant.json", "models/float.json", "data/sample.csv"):
        assert rel in copied_sources(), rel
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built_repo / rel, app / rel)
    return env_dir / "bin" / "python", app


def run_image(image, *args, **kw):
    python, app = image
    cmd = [str(python), "-I", "-m", "cali_reg", *args]
    env = {"CALI_REG_HOME": str(app), "PATH": "/usr/bin:/bin"}
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=60, **kw)


def test_the_shipped_files_alone_serve_predictions(built_repo, image):
    predict = [sys.executable, "-m", "cali_reg", "predict"]
    # the image's default command, with nothing piped in: the sample line
    default = run_image(image, "predict", "--sample-if-no-input", "5")
    assert default.returncode == 0, default.stderr
    assert default.stdout == sh([*predict, "--sample", "5"], built_repo).stdout
    assert default.stdout.startswith("Sample predictions: [")
    # with rows piped in: one prediction per row, as in the full project
    rows = (built_repo / "data/sample.csv").read_text()
    piped = run_image(image, "predict", "--sample-if-no-input", "5", input=rows, stdin=None)
    assert piped.stdout == sh(predict, built_repo, input=rows).stdout
    assert len(piped.stdout.splitlines()) == len(rows.splitlines()) - 1
    # the float model is there too, and scikit-learn is not needed for either
    floats = run_image(image, "predict", "--model", "float", input=rows, stdin=None)
    assert floats.stdout == sh([*predict, "--model", "float"], built_repo, input=rows).stdout
    python, _ = image
    check = "import importlib.util as u; print(u.find_spec('sklearn'), u.find_spec('numpy'))"
    found = subprocess.run([str(python), "-I", "-c", check], capture_output=True, text=True)
    assert found.stdout.startswith("None ModuleSpec(name='numpy'")
