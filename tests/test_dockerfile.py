"""The Docker image's recipe: what it copies is what the context allows, and that is enough.

Building the image needs a container engine (see README: Docker); these tests check,
without one, that the files it ships run the served predictor on their own.
"""
import re
import shutil
import subprocess
import sys

from tests.conftest import ROOT, sh


def copied_sources() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources.extend(line.split()[1:-1])
    return sources


def allowed_in_context() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, ".dockerignore must start from an empty context"
    return [line[1:] for line in lines if line.startswith("!")]


def pin(text: str, package: str) -> str:
    found = re.findall(rf"^{package}==(\S+)$", text, flags=re.M)
    return found[0] if len(found) == 1 else ""


def test_numpy_in_the_image_is_pinned_as_in_requirements():
    requirements = (ROOT / "requirements.txt").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    installed = re.findall(r"pip install --no-cache-dir (.*?)\s*(?:\\|$)", dockerfile, flags=re.M)
    assert installed == [f"numpy=={pin(requirements, 'numpy')}"]


def test_the_context_holds_exactly_the_files_the_image_copies():
    assert sorted(copied_sources()) == sorted(allowed_in_context())


def test_the_shipped_files_alone_serve_predictions(built_repo, tmp_path):
    image = tmp_path / "app"
    for rel in copied_sources():
        (image / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built_repo / rel, image / rel)
    cmd = [sys.executable, "-m", "stages.predict"]
    # the image's default command, with nothing piped in: the sample line
    default = sh(cmd + ["--sample-if-no-input", "5"], image, stdin=subprocess.DEVNULL)
    assert default.stdout == sh(cmd + ["--sample", "5"], built_repo).stdout
    assert default.stdout.startswith("Sample predictions: [")
    # with rows piped in: one prediction per row, as in the full project
    rows = (built_repo / "data/sample.csv").read_text()
    piped = sh(cmd + ["--sample-if-no-input", "5"], image, input=rows)
    assert piped.stdout == sh(cmd, built_repo, input=rows).stdout
    assert len(piped.stdout.splitlines()) == len(rows.splitlines()) - 1
    # the float model is not shipped: one line, exit 2
    refused = sh(cmd + ["--model", "float"], image, input=rows, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("error: --model float is not in this image, which serves the "
                              "quantised model; use --model quant\n")
