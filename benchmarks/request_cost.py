"""What the metrics and the access log add to a request's CPU time, in process.

    python benchmarks/request_cost.py [--requests 20000] [--rounds 7] [--rows 1]
                                      [--only on|off] [--protocol mlflow|v2]

`cali-reg serve`'s app (``cali_reg.serve.App``, models/float.json) is built twice in this
process: as shipped ("on": metrics in a fresh ``$PROMETHEUS_MULTIPROC_DIR``, the text
access log, written to /dev/null) and as ``--no-metrics --access-log off`` ("off"). Each
is called --requests times in a row on one event loop, as granian calls it (a request's
scope and body in, its answer out; no network, no granian), with benchmarks/serve.py's
bodies: the first rows of data/test.csv as MLflow's ``dataframe_split`` and as one V2
tensor. After 200 requests each to warm up, the two take turns for --rounds rounds;
printed: the best round's CPU time per request (this process's user and system time,
which other work on a shared machine disturbs less than wall time), and the difference.

``--only`` and ``--protocol`` run one setting and protocol, for a count of instructions
and cache misses that no other work disturbs (docs/serving.md, "Access log")::

    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=yes \\
        python benchmarks/request_cost.py --only on --protocol mlflow --rounds 1 --requests 3000

minus the same with ``--requests 0``, divided by 3,000.

The whole server (granian, the network, two workers) is measured by
``benchmarks/serve.py --observability-only``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve import PROTOCOLS, payloads

MODEL_FILE = ROOT / "models" / "float.json"
YIELD_EVERY = 64  # requests between the loop's turns (its timers: the log's flush, timeouts)
WARM_UP = 200  # requests per setting before any is measured
SETTINGS = {  # as shipped, and --no-metrics --access-log off
    "on": {"access_log": "text", "metrics": True},
    "off": {"access_log": "off", "metrics": False},
}


class Scope:
    """What granian's RSGI scope offers the app for a POST."""

    proto, method = "http", "POST"

    def __init__(self, path: str, body: bytes) -> None:
        self.path = path
        self.headers = {"content-type": "application/json", "content-length": str(len(body))}


class Proto:
    """granian's RSGI protocol object: the body in, the answer's status kept."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers, body: bytes) -> None:
        self.status = status


async def _calls(app, scope: Scope, proto: Proto, n: int) -> int:
    """CPU nanoseconds for ``n`` requests."""
    handle = app.__rsgi__
    start = time.process_time_ns()
    for i in range(n):
        await handle(scope, proto)
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    cpu = time.process_time_ns() - start
    if n and proto.status != 200:
        raise SystemExit(f"{scope.path} answered {proto.status}")
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1, choices=(1, 1000), help="rows per body")
    parser.add_argument("--only", choices=SETTINGS, help="run one setting (for cachegrind)")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), help="run one protocol")
    args = parser.parse_args()
    if not MODEL_FILE.is_file():
        raise SystemExit(f"{MODEL_FILE} is missing; run 'dvc repro' first")
    metrics_dir = tempfile.mkdtemp(prefix="request-cost-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before prometheus_client's import
    from cali_reg.serve import App

    devnull = os.open(os.devnull, os.O_WRONLY)
    loop = asyncio.new_event_loop()
    apps = {
        setting: App(MODEL_FILE, **SETTINGS[setting])
        for setting in SETTINGS
        if args.only in (None, setting)
    }
    for app in apps.values():
        if app.access_log is not None:
            app.access_log.fd = devnull
        app.__rsgi_init__(loop)
    bodies = payloads()
    try:
        for protocol, path in PROTOCOLS.items():
            if args.protocol not in (None, protocol):
                continue
            body = bodies[protocol, args.rows]
            scope, proto = Scope(path, body), Proto(body)
            for app in apps.values():  # the first requests make the metrics' label values
                loop.run_until_complete(_calls(app, scope, proto, WARM_UP))
            best = dict.fromkeys(apps, float("inf"))
            for _ in range(args.rounds):
                for setting, app in apps.items():
                    cpu = loop.run_until_complete(_calls(app, scope, proto, args.requests))
                    best[setting] = min(best[setting], cpu / max(1, args.requests) / 1000)
            if not args.requests:  # the warm-up alone (cachegrind's baseline)
                continue
            what = f"{protocol}, {args.rows} row(s)"
            rounds = f"best of {args.rounds} rounds of {args.requests:,}"
            if len(best) == 1:
                print(f"{what}, {args.only}: {best[args.only]:.2f} µs/request; {rounds}")
                continue
            on, off = best["on"], best["off"]
            print(
                f"{what}: {on:.2f} µs/request with metrics and the text log, {off:.2f} "
                f"without; +{on - off:.2f} µs ({on / off - 1:+.1%}); {rounds}"
            )
    finally:
        for app in apps.values():
            app.__rsgi_del__(loop)
        loop.close()
        os.close(devnull)
        for name in os.listdir(metrics_dir):
            os.unlink(os.path.join(metrics_dir, name))
        os.rmdir(metrics_dir)


if __name__ == "__main__":
    main()
