"""Fixtures: a throw-away copy of the project in which the real pipeline runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "scikit_learn_data"


def project_env() -> dict:
    """The environment the pipeline runs in: this interpreter's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if "SCIKIT_LEARN_DATA" not in env and SHARED_DATA.is_dir():
        env["SCIKIT_LEARN_DATA"] = str(SHARED_DATA)
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
        DVC_NO_ANALYTICS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


# No command of a test should take this long; a hang then fails one test instead of CI.
COMMAND_TIMEOUT = 600


def sh(args, cwd, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command in ``cwd``; fail the test with its output if ``check`` and it fails."""
    kw.setdefault("timeout", COMMAND_TIMEOUT)
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run(args, cwd=cwd, env=project_env(), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args, cwd, check=True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check=check)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).exists()]


def copy_project(dest: Path) -> Path:
    """The project's tracked files, as in the working tree, in a fresh git repo."""
    for rel in tracked_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    sh(["git", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory) -> Path:
    """A copy of the project after a full ``dvc repro -f``. Read it; do not change it."""
    repo = copy_project(tmp_path_factory.mktemp("built"))
    dvc("repro", "-f", cwd=repo)
    return repo


@pytest.fixture
def repo(built_repo, tmp_path) -> Path:
    """A private, already-built copy (outputs and DVC cache included) that a test may change."""
    dest = tmp_path / "repo"
    shutil.copytree(built_repo, dest, symlinks=True)
    return dest
