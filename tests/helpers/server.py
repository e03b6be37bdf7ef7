"""``cali-reg serve`` in a subprocess on a free loopback port, for tests and benchmarks."""

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import project_env

START_TIMEOUT = 30
# Longer than the server's own bound on its shutdown (it kills a worker still busy
# --timeout + 5 s after SIGTERM, at most 65 s): on a loaded machine a worker that was
# still starting can miss the signal, and the server kills it then.
# Normally it exits within a second.
STOP_GRACE = 70


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float, whole_group: bool = False) -> int:
    """Stop a process started with ``start_new_session=True``, and all of its group; its
    exit code.

    SIGTERM goes to the process (as Kubernetes sends it to a container's first process),
    or with ``whole_group`` to every process of the group; SIGKILL goes to what is left of
    the group after ``grace`` seconds, or right away to workers that outlive their parent.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if whole_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


class Server:
    """``cali-reg serve`` in a subprocess, stopped by its PID."""

    def __init__(self, repo, *args):
        self.port = free_port()
        # stdout (the access log) and stderr (granian's log, tracebacks) go to files
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.errors = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".err", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cali_reg", "serve", "--port", str(self.port), *args],
            cwd=repo,
            env=project_env(),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.errors,
            # its own process group: if the server must be killed, its workers go with it
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                message = self.stderr()
                self.stop()
                pytest.fail(f"the server exited {self.proc.returncode}: {message}")
            try:
                if self.request("GET", "/ping")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"the server did not answer /ping within {START_TIMEOUT} s")

    def request(self, method, path, body=None, content_type=None, conn=None):
        """(status, headers, parsed JSON body) of one request."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), (json.loads(data) if data else None)
        finally:
            if own:
                conn.close()

    def post(self, body, content_type="application/json", conn=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        status, _, doc = self.request("POST", "/invocations", body, content_type, conn)
        return status, doc

    def v2_infer(self, doc, path="/v2/models/quant-model/infer"):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        status, _, answer = self.request("POST", path, body, "application/json")
        return status, answer

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; the exit code.

        First waits (at most START_TIMEOUT) for every worker granian spawned to have
        started: one still starting can miss the signal, and the server then waits its
        --timeout + 5 s before it kills it, a wait that no test is about.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            log = self.stderr()
            spawned = set(re.findall(r"Spawning worker-(\d+)", log))
            if spawned <= set(re.findall(r"Started worker-(\d+) runtime", log)):
                break
            time.sleep(0.05)
        stop_group(self.proc, STOP_GRACE)
        for f in (self.log, self.errors):
            f.close()
            Path(f.name).unlink(missing_ok=True)
        return self.proc.returncode

    def access_log(self, lines: int = 0) -> list[str]:
        """The access log once it has at least ``lines`` lines (workers write theirs within
        ``serve.LOG_FLUSH_SECONDS``), or after 5 s."""
        deadline = time.monotonic() + 5
        while True:
            log = Path(self.log.name).read_text().splitlines()
            if len(log) >= lines or time.monotonic() > deadline:
                return log
            time.sleep(0.01)

    def stderr(self) -> str:
        return Path(self.errors.name).read_text()
