"""Tool venvs: third-party checkers and clients kept out of the project's own environment.

A test that needs a heavy tool (a schema validator, a V2 client library) runs it in a venv
of its own, created here on first use with pinned versions, as the serving benchmark keeps
MLflow in its own. ``.ci/run`` needs no step for them: the first test that asks builds it.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900  # seconds: pip on a loaded machine, from the package index


def tool_python(name: str, pins: list[str], root: Path = ROOT) -> Path:
    """The Python of ``root/.venv-NAME`` holding exactly ``pins``, made or remade if not.

    The pins are written into the venv once pip has finished, so a venv left half-made by an
    interrupted install, or made with other pins, is built again. A lock serialises two
    processes asking for the same venv.
    """
    path = root / f".venv-{name}"
    python = path / "bin" / "python"
    stamp = path / "pins.txt"
    wanted = "\n".join(pins) + "\n"
    with open(root / f".venv-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        proc = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *pins,
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(pins)} failed:\n{proc.stderr[-3000:]}")
        stamp.write_text(wanted)
    return python
