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
import tempfile
import threading
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
    "call_dvc",
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


def dvc(*args, cwd, check=True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``dvc ARGS`` in ``cwd`` with ``env`` (default: the project's environment), called
    in this process (``call_dvc``); fails the test with its output if ``check`` and it
    fails."""
    proc = call_dvc(list(args), cwd, project_env() if env is None else env)
    if check and proc.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def _environment(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _captured_fds():
    """File descriptors 1 and 2, ``sys.stdout`` and ``sys.stderr``, and DVC's log handlers
    (which hold the streams they were set up with) to temporary files for the block.

    Yields a function that returns what was written, (stdout, stderr). At the descriptor
    level, because the stages ``dvc repro`` runs inherit the descriptors, as they would
    from a ``dvc`` process.
    """
    import logging

    from colorama import initialise

    handlers = {
        handler
        for name in ("dvc", "dvc_objects", "dvc_data")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.StreamHandler)
    }
    saved_streams = {handler: handler.stream for handler in handlers}
    saved_sys = sys.stdout, sys.stderr
    # DVC writes JSON between colorama.deinit() and reinit(), which put back the streams
    # that colorama.init() found when DVC was imported: they are pointed here too.
    colorama_names = ("orig_stdout", "orig_stderr", "wrapped_stdout", "wrapped_stderr")
    saved_colorama = {name: getattr(initialise, name) for name in colorama_names}
    for stream in saved_sys:
        stream.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved_fds = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        new_out = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        new_err = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout, sys.stderr = new_out, new_err
        for name in colorama_names:
            setattr(initialise, name, new_err if name.endswith("err") else new_out)
        for handler in saved_streams:
            # dvc.logger.setup: warnings and errors to stderr, the rest to stdout
            handler.setStream(new_err if handler.level >= logging.WARNING else new_out)

        def flush() -> None:
            new_out.flush()
            new_err.flush()

        def written() -> tuple[str, str]:
            flush()
            return tuple(
                os.pread(f.fileno(), os.fstat(f.fileno()).st_size, 0).decode(errors="replace")
                for f in (out, err)
            )

        try:
            yield written
        finally:
            flush()
            sys.stdout, sys.stderr = saved_sys
            for name, stream in saved_colorama.items():
                setattr(initialise, name, stream)
            for handler, stream in saved_streams.items():
                handler.setStream(stream)
            for fd, saved in zip((1, 2), saved_fds, strict=True):
                os.dup2(saved, fd)
                os.close(saved)


def call_dvc(argv: list[str], cwd, env: dict) -> subprocess.CompletedProcess:
    """``python -m dvc ARGV`` in ``cwd`` with exactly the environment ``env``, called in
    this process: DVC's own ``main`` (DVC's test suite calls it so), without the start-up
    (about half a second of CPU a command). The stages that ``dvc repro`` runs are still
    processes of their own, and write to the captured descriptors.

    Not for a command a test kills, or one that starts processes that outlive it
    (``dvc queue start``): those run as processes.
    """
    import faulthandler

    from dvc.cli import main
    from dvc.ui import ui

    # fsspec keeps a file system per set of arguments, and credentials that come from the
    # environment are not among them: each command makes its own, as a new process would.
    from fsspec.spec import AbstractFileSystem

    for fs_class in _subclasses(AbstractFileSystem):
        fs_class.clear_instance_cache()
    # a hang fails this worker's test (the worker exits) instead of holding up the run
    faulthandler.dump_traceback_later(COMMAND_TIMEOUT, exit=True)
    try:
        with (
            _environment(env),
            contextlib.chdir(cwd),
            _captured_fds() as written,
            warnings.catch_warnings(),
        ):
            # as a new interpreter filters them: DVC's dependencies' deprecations unshown
            for category in (DeprecationWarning, PendingDeprecationWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                code = _in_fresh_thread(main, argv)
            finally:
                ui._enabled = False  # as a new process starts (no public way back)
                for name in ("rich_console", "error_console"):
                    ui.__dict__.pop(name, None)
            out, err = written()
    finally:
        faulthandler.cancel_dump_traceback_later()
    return subprocess.CompletedProcess(["dvc", *argv], code, out, err)


def _in_fresh_thread(func: Callable, *args):
    """``func(*args)`` in a new thread, whose frames start at the bottom of their own stack.

    Called under pytest's deep stack, DVC's loops went up and down across a boundary of
    CPython 3.11's frame stack, which maps and unmaps 16 KiB at each crossing: 100,000
    pairs of system calls for one ``dvc exp run``, and more CPU than the process it saved.
    """
    result: list = []

    def target() -> None:
        try:
            result.append((True, func(*args)))
        except BaseException as exc:  # re-raised in the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=target, name="dvc")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


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


def call_cli(
    argv: Sequence[str], cwd, stdin: str | bytes | None = None
) -> subprocess.CompletedProcess:
    """``cali-reg ARGV`` in ``cwd``, called in this process (see ``call_stage``).

    stdin is a real file, as ``sh`` gives a process: ``stdin`` written to a temporary
    file (rows piped in), or /dev/null when it is None. Not for what only a real process
    shows: a terminal on stdin, a closed pipe, start-up time or imports, memory.
    """
    from cali_reg import cli

    saved = sys.stdin
    with tempfile.TemporaryFile() as piped:
        if stdin is None:
            sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
        else:
            piped.write(stdin.encode() if isinstance(stdin, str) else stdin)
            piped.seek(0)
            sys.stdin = open(piped.fileno(), encoding="utf-8", closefd=False)  # noqa: SIM115
        try:
            return _call(["cali-reg", *argv], lambda: cli.main(list(argv)), cwd)
        finally:
            sys.stdin.close()
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
