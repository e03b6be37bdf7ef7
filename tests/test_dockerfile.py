"""The Docker image's recipe: what it copies is what the context allows, and that is enough.

Building the image needs a container engine (docs/docker.md); these tests check,
without one, that the package and files it ships serve predictions on their own.
"""

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
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


def in_context(rel: str) -> bool:
    """Whether .dockerignore lets ``rel`` into the build context.

    Docker matches a pattern segment by segment (``*`` never crosses a ``/``), so
    ``cali_reg/*.py`` does not reach ``cali_reg/formats/``.
    """
    parts = rel.split("/")
    return any(
        len(pattern.split("/")) == len(parts)
        and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern.split("/"), strict=True))
        for pattern in allowed_in_context()
    )


def package_sources() -> list[str]:
    """The package's Python files, relative to the project root."""
    return sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "cali_reg").rglob("*.py")
        if "__pycache__" not in p.parts
    )


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


def test_every_package_module_reaches_the_image_and_the_wheel():
    missing = [rel for rel in package_sources() if not in_context(rel)]
    assert not missing, f"not in the build context (.dockerignore): {missing}"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {
        str(p.parent.relative_to(ROOT)).replace("/", ".")
        for p in ROOT.glob("cali_reg/**/__init__.py")
    }
    assert set(config["packages"]) == packages


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
    for rel in package_sources():  # what the build context lets through, nothing else
        if in_context(rel):
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, site / rel)
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
