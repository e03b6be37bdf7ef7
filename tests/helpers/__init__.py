"""What the tests and the benchmarks share: running commands in a copy of the project, a
built copy made once per test run, stages and commands called in-process, and a real S3
server (:mod:`tests.helpers.s3server`, also ``python -m tests.helpers.s3server``).

Test modules import from here, never from each other or from ``conftest.py``, which
holds only fixtures.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "COMMAND_TIMEOUT",
    "ROOT",
    "SECRET_KEY",
    "SHARED_DATA",
    "S3Server",
    "S3ServerError",
    "build_project",
    "call_cli",
    "call_stage",
    "copy_built",
    "copy_project",
    "dvc",
    "free_ports",
    "once_per_run",
    "project_env",
    "read_json",
    "run_queue",
    "run_stages",
    "s3_client",
    "set_params",
    "sh",
    "shared_build",
    "tracked_files",
    "weed_binary",
]

# The S3 server's names, importable from here too; loaded on first use, so that
# ``python -m tests.helpers.s3server`` does not find its module already imported.
_S3_NAMES = {
    "ACCESS_KEY",
    "BUCKET",
    "SECRET_KEY",
    "S3Server",
    "S3ServerError",
    "free_ports",
    "once_per_run",
    "s3_client",
    "weed_binary",
}


def __getattr__(name: str):
    if name in _S3_NAMES:
        return getattr(importlib.import_module("tests.helpers.s3server"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data" / "scikit_learn_data"

# No command of a test should take this long; a hang then fails one test instead of CI.
COMMAND_TIMEOUT = 600


def project_env(write_bytecode: bool = False) -> dict:
    """The environment the pipeline runs in: this interpreter's tools first on PATH.

    Tests write no bytecode into the copies they make; the benchmarks, which time
    start-ups as a user meets them, pass ``write_bytecode=True``.
    """
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
    )
    if write_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def sh(args, cwd, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command in ``cwd``; fail the test with its output if ``check`` and it fails."""
    kw.setdefault("timeout", COMMAND_TIMEOUT)
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run(args, cwd=cwd, env=project_env(), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        import pytest

        pytest.fail(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args, cwd, check=True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check=check)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def set_params(repo, **sections) -> None:
    """Update ``params.yaml`` in ``repo``: ``set_params(repo, quantize={"bits": 6})``."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


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


def build_project(dest: Path) -> Path:
    """A copy of the project with its pipeline's outputs current and in DVC's cache, its
    modules byte-compiled.

    The outputs, and their objects in DVC's cache, are the working tree's own where it
    has them (CI's gate has just proved them reproduced byte for byte), and ``dvc repro``
    then rebuilds whatever is stale or missing, as it would for a user: a test run does
    not repeat the whole pipeline. ``tests/test_pipeline.py`` forces one full rebuild and
    compares it with these bytes. The bytecode (git- and dvc-ignored) is copied along
    with the copy, so that the stages and commands that the tests start in copies of it
    do not compile the package again each time (the tests run with
    PYTHONDONTWRITEBYTECODE).
    """
    repo = copy_project(dest)
    lock = repo / "dvc.lock"
    stages = yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {}
    outs = [out for stage in stages.values() for out in stage.get("outs", [])]
    for out in outs:
        md5 = out.get("md5", "")
        obj = Path(".dvc", "cache", "files", "md5", md5[:2], md5[2:])
        for rel in (out["path"], obj):
            if (ROOT / rel).is_file() and not (repo / rel).exists():  # git's are there
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, repo / rel)
    dvc("repro", cwd=repo)
    sh([sys.executable, "-m", "compileall", "-q", "cali_reg", "stages"], repo)
    return repo


# Content-addressed and never written in place (git's objects; DVC's cache, whose files
# DVC makes read-only and replaces by rename): shared between copies by hard links.
_IMMUTABLE = (f"{os.sep}.git{os.sep}objects{os.sep}", f"{os.sep}.dvc{os.sep}cache{os.sep}")


def _link_or_copy(src: str, dst: str) -> None:
    if any(part in src for part in _IMMUTABLE):
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or no hard links: copy
            pass
    shutil.copy2(src, dst)


def copy_built(src: Path, dest: Path) -> Path:
    """A private copy of a built project, for a test to change; git's objects and DVC's
    cache are hard links (about a fifth of the bytes to write, for a copy per test)."""
    shutil.copytree(src, dest, symlinks=True, copy_function=_link_or_copy)
    return dest


def once_per_run(shared_dir: Path, make: Callable[[Path], object]) -> Path:
    """``make(shared_dir / "made")`` once per test run; that folder, for callers to read or
    copy, never to change.

    Parallel workers (pytest-xdist) call this with the same ``shared_dir`` (under the
    ``run_dir`` fixture's folder): the first makes it under a file lock, the others wait
    and find it made. A module's costly fixture is then made once per run, not once per
    worker that runs one of its tests.
    """
    shared_dir.mkdir(parents=True, exist_ok=True)
    made, done = shared_dir / "made", shared_dir / "made.done"
    with open(shared_dir / "made.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(made, ignore_errors=True)  # one that failed half-way
            made.mkdir()
            make(made)
            done.touch()
    return made


def shared_build(shared_dir: Path, dest: Path) -> Path:
    """``build_project`` once per test run (``once_per_run``), copied to ``dest``: each
    worker has a private copy, so that no two processes run DVC in one repo."""
    return copy_built(once_per_run(shared_dir, build_project), dest)


def _exit_code(code) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _call(args: list[str], main: Callable[[], object], cwd) -> subprocess.CompletedProcess:
    from cali_reg.errors import run

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("default")  # as a fresh interpreter shows them
        try:
            run(main)
        except SystemExit as exit_:
            code = _exit_code(exit_.code)
    # where the interpreter would have printed them: on stderr, so a test that wants one
    # line there sees them
    shown = "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught
    )
    return subprocess.CompletedProcess(args, code, out.getvalue(), shown + err.getvalue())


def call_stage(name: str, cwd) -> subprocess.CompletedProcess:
    """``python -m stages.NAME`` in ``cwd``, called in this process: the same ``main`` under
    the same error handler (a UserError is one line on stderr and exit code 2), without the
    interpreter start-up. Anything else it raises propagates and fails the test."""
    module = importlib.import_module(f"stages.{name}")
    return _call(["python", "-m", f"stages.{name}"], module.main, cwd)


def run_stages(repo, *names: str) -> None:
    """The stages ``names`` called in order in ``repo`` (``call_stage``), as ``dvc repro``
    runs those a param change touches; each must succeed. For the figures of a setting:
    what DVC does around the stages is tested once, where it is the point."""
    for name in names:
        proc = call_stage(name, repo)
        if proc.returncode != 0:
            pytest.fail(f"stage {name} exited {proc.returncode}\n{proc.stderr}")


def call_cli(argv: Sequence[str], cwd, stdin: str = "") -> subprocess.CompletedProcess:
    """``cali-reg ARGV`` in ``cwd``, called in this process (see ``call_stage``), ``stdin``
    piped in. Not for what only a real process shows: a terminal on stdin, a closed
    pipe, start-up time or imports, memory."""
    from cali_reg import cli

    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
    try:
        return _call(["cali-reg", *argv], lambda: cli.main(list(argv)), cwd)
    finally:
        sys.stdin = saved


def run_queue(repo, jobs: int = 2, timeout: float = 600) -> str:
    """``dvc queue start -j jobs``, waited for until nothing is queued or running.

    Returns the last ``dvc queue status``; fails the test past ``timeout`` seconds, and
    stops the queue's workers whatever happens.
    """
    try:
        # The workers DVC starts outlive this command and inherit its stdout and
        # stderr: hand it a file, not a pipe that would stay open until they exit.
        with open(Path(repo).parent / "queue-start.log", "w") as log:
            subprocess.run(
                [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
                cwd=repo,
                env=project_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            # Each `dvc queue status` costs half a second of CPU, which the experiments
            # need more: a look every 4 s (an experiment takes several).
            time.sleep(4)
            status = dvc("queue", "status", cwd=repo).stdout
            if not any(word in status for word in ("Queued", "Running")):
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"the queue did not finish in {timeout:g} s:\n{status}")
    finally:
        dvc("queue", "stop", "--kill", cwd=repo, check=False)
        _stop_queue_workers(Path(repo))


def _stop_queue_workers(repo: Path, grace: float = 10) -> None:
    """Stop, by PID, the queue workers DVC started in ``repo`` that outlive ``queue stop``.

    DVC detaches them, so they are found by their working directory: this test's own copy.
    """
    workers = []
    for proc in Path("/proc").iterdir():
        try:
            if os.readlink(proc / "cwd") == str(repo.resolve()) and (
                b"queue-worker" in (proc / "cmdline").read_bytes()
            ):
                workers.append(int(proc.name))
        except (OSError, ValueError):
            continue  # not a process, gone, or not ours to read
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while workers and time.monotonic() < deadline:
            workers = [pid for pid in workers if _alive(pid)]
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:  # a zombie has exited: its state, after the name in brackets, is Z
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
