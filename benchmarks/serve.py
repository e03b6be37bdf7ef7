"""Load test: `cali-reg serve` against `mlflow models serve`, same float model, same payloads.

    python benchmarks/serve.py [--workers 2] [--seconds 10] [--requests 200000]
                               [--mlflow-venv .venv-mlflow]

Both servers run on 127.0.0.1 on free ports, one at a time (they would share the
CPU otherwise), each stopped by its process group's id. A closed-loop load
generator (asyncio, raw HTTP/1.1, keep-alive connections) sends MLflow
``dataframe_split`` bodies from data/test.csv: single rows from 8 clients, then
1,000-row bodies from 4. Each scenario stops at --requests or --seconds,
whichever comes first. Every answer is checked (status 200 and the number of
predictions); the error count must be 0.

MLflow lives only in its own venv (default .venv-mlflow, created here with
mlflow==3.17.0 if missing; never in requirements.txt or the image). The MLflow
model is scikit-learn's LinearRegression fitted on data/train.csv as the train
stage fits it, with models/float.json's weights, saved with mlflow.sklearn.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cali_reg.data import FEATURES
from tests.helpers import free_ports

MLFLOW_PINS = ["mlflow==3.17.0", "scikit-learn==1.9.1"]
SCENARIOS = [("single row", 1, 8), ("1,000 rows", 1000, 4)]
START_TIMEOUT = 180
STOP_GRACE = 10

SAVE_MLFLOW_MODEL = """
import json, sys
import numpy as np, pandas as pd
import mlflow.sklearn
from mlflow.models import infer_signature
from sklearn.linear_model import LinearRegression
weights, out, train = json.load(open(sys.argv[1])), sys.argv[2], pd.read_csv(sys.argv[3])
X, y = train[weights["feature_names"]], train.iloc[:, -1]
model = LinearRegression().fit(X, y)
model.coef_, model.intercept_ = np.array(weights["coef"]), float(weights["intercept"])
mlflow.sklearn.save_model(model, out, signature=infer_signature(X, model.predict(X)))
"""


# --- the load generator ------------------------------------------------------------------


async def _read_response(reader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status, length, chunked, close = int(lines[0].split()[1]), 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value
        elif key == b"connection":
            close = value == b"close"
    if not chunked:
        return status, await reader.readexactly(length), close
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return status, body, close


def _whole(body: bytes, n_rows: int) -> bool:
    """A {"predictions": [...]} answer of n_rows numbers. Counting commas instead of
    parsing keeps the load generator's own CPU use small: it shares the cores."""
    return body.startswith((b'{"predictions":[', b'{"predictions": [')) and (
        body.count(b",") == n_rows - 1
    )


async def _client(port, request, n_rows, stop_at, budget, latencies, errors):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            status, body, close = await _read_response(reader)
            latencies.append(time.perf_counter() - start)
            if status != 200 or not _whole(body, n_rows):
                errors.append(status)
            if close:  # the server will not take another request on this connection
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def load(port, body: bytes, n_rows: int, clients: int, requests: int, seconds: float):
    request = (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies, errors, budget = [], [], [requests]
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _client(port, request, n_rows, start + seconds, budget, latencies, errors)
            for _ in range(clients)
        )
    )
    wall = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "req_s": n / wall,
        "rows_s": n * n_rows / wall,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
        "errors": len(errors),
    }


# --- the servers ------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, argv: list[str], port: int, env=None):
        self.name, self.port = name, port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        # its own process group: mlflow starts uvicorn in a child, and both must stop
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(
                    f"error: {name} exited {self.proc.returncode}:\n{self.log.read().decode()}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        sys.exit(f"error: {name} did not answer /ping within {START_TIMEOUT} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def mlflow_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path} with {' '.join(MLFLOW_PINS)} (a few minutes)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *MLFLOW_PINS,
            ],
            check=True,
        )
    return python


def payloads() -> dict[int, bytes]:
    with open(ROOT / "data" / "test.csv", newline="") as f:
        rows = list(csv.reader(f))
    cols = [rows[0].index(name) for name in FEATURES]
    data = [[float(r[i]) for i in cols] for r in rows[1:1001]]
    return {
        n: json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": data[:n]}}).encode()
        for _, n, _ in SCENARIOS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of each server (default: 2)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time bound per scenario")
    parser.add_argument("--requests", type=int, default=200_000, help="request bound per scenario")
    parser.add_argument("--mlflow-venv", type=Path, default=ROOT / ".venv-mlflow")
    args = parser.parse_args()
    for path in ("models/float.json", "data/test.csv", "data/train.csv"):
        if not (ROOT / path).exists():
            sys.exit(f"error: {path} is missing; run 'dvc repro' first")

    mlflow_python = mlflow_venv(args.mlflow_venv.resolve())
    bodies = payloads()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "mlflow-model"
        subprocess.run(
            [
                str(mlflow_python),
                "-c",
                SAVE_MLFLOW_MODEL,
                str(ROOT / "models/float.json"),
                str(model_dir),
                str(ROOT / "data/train.csv"),
            ],
            check=True,
            capture_output=True,
        )
        env = dict(os.environ)
        # mlflow starts `uvicorn` from PATH; offline, with a file store in the temp dir
        env["PATH"] = f"{mlflow_python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["MLFLOW_TRACKING_URI"] = f"file://{tmp}/mlruns"
        servers = {
            "cali-reg": lambda port: Server(
                "cali-reg serve",
                [
                    sys.executable,
                    "-m",
                    "cali_reg",
                    "serve",
                    "--model",
                    "models/float.json",
                    "--port",
                    str(port),
                    "--workers",
                    str(args.workers),
                ],
                port,
            ),
            "mlflow": lambda port: Server(
                "mlflow models serve",
                [
                    str(mlflow_python.parent / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    str(model_dir),
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-w",
                    str(args.workers),
                ],
                port,
                env,
            ),
        }
        answers = {}
        for name, start in servers.items():
            server = start(free_ports(1)[0])
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{server.port}/invocations",
                    data=bodies[1000],
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=60) as resp:
                    answers[name] = json.loads(resp.read())["predictions"]
                results[name] = {}
                for label, n_rows, clients in SCENARIOS:
                    asyncio.run(load(server.port, bodies[n_rows], n_rows, clients, 50, 2))  # warm
                    results[name][label] = asyncio.run(
                        load(
                            server.port,
                            bodies[n_rows],
                            n_rows,
                            clients,
                            args.requests,
                            args.seconds,
                        )
                    )
            finally:
                server.stop()

    diff = max(abs(a - b) for a, b in zip(answers["cali-reg"], answers["mlflow"], strict=True))
    print(
        f"float model, {args.workers} worker(s) each, {os.cpu_count()} CPUs; "
        f"largest difference between the two servers' 1,000 predictions: {diff:.1e}"
    )
    print()
    print("| scenario | server | req/s | rows/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, _, clients in SCENARIOS:
        for name in servers:
            r = results[name][label]
            print(
                f"| {label}, {clients} clients | {name} | {r['req_s']:,.0f} | "
                f"{r['rows_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
            )
    print()
    for label, _, _ in SCENARIOS:
        c, m = results["cali-reg"][label], results["mlflow"][label]
        print(
            f"{label}: cali-reg / mlflow = {c['req_s'] / m['req_s']:.1f}x throughput, "
            f"p99 {c['p99_ms']:.2f} ms vs {m['p99_ms']:.2f} ms"
        )
    errors = sum(r["errors"] for by in results.values() for r in by.values())
    if errors:
        sys.exit(f"error: {errors} requests failed")


if __name__ == "__main__":
    main()
