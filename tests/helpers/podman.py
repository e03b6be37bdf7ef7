"""``../shared/tools/container-check``, called by one test process at a time.

container-check rewrites its podman configuration (``storage.conf``) on every call, and
podman and buildah read it again while they work: a build that reads it while another
call is rewriting it fails ("runroot must be set"). Parallel test workers, and test runs
of other checkouts on the same machine, therefore take turns, through a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

CONTAINER_CHECK = ROOT.parent / "shared" / "tools" / "container-check"
LOCK_FILE = Path(tempfile.gettempdir()) / "cali-reg-container-check.lock"

_held = threading.local()


@contextlib.contextmanager
def turn() -> Iterator[None]:
    """Hold the machine's container-check lock; re-entrant within a thread."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


def container_check(
    *args: str, check: bool = True, timeout: float = 600, **kwargs
) -> subprocess.CompletedProcess:
    """``container-check ARGS`` in its turn, its output captured; a failure fails the test
    (with ``check``)."""
    with turn():
        proc = subprocess.run(
            [str(CONTAINER_CHECK), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=kwargs.pop("stdin", subprocess.DEVNULL),
            **kwargs,
        )
    if check and proc.returncode != 0:
        pytest.fail(
            f"container-check {' '.join(args)} exited {proc.returncode}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def podman(*args: str, check: bool = True, timeout: float = 600, **kwargs):
    """``podman ARGS`` with container-check's settings (see ``container_check``)."""
    return container_check("podman", *args, check=check, timeout=timeout, **kwargs)
