"""Benchmark: a fresh clone made ready to predict by `dvc pull` against by `dvc repro`, and
the times of `dvc push` and `dvc pull` of the whole pipeline's outputs, through a real S3
server (SeaweedFS on 127.0.0.1, tests/helpers/s3server.py).

    python benchmarks/remote.py [--runs 3]

Not part of the test suite. Everything happens in a temp folder: a clone of HEAD built once
with `dvc repro` (uncommitted changes are not measured), HOME and DVC's site cache there too.
The two ways to a working predictor are timed alternately in the same run, each in a fresh
clone with an empty DVC cache (the git clone itself is not timed, being the same for both);
each `dvc push` goes to an empty prefix of the bucket. Figures are medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import S3Server, project_env

MAX_RUNS = 10
COMMAND_TIMEOUT = 600


def environment(home: Path, server: S3Server) -> dict:
    env = {k: v for k, v in project_env(write_bytecode=True).items() if not k.startswith("AWS_")}
    env.pop("CALI_REG_HOME", None)
    env.update(server.env, HOME=str(home), DVC_SITE_CACHE_DIR=str(home / "dvc-site-cache"))
    return env


class Bench:
    def __init__(self, tmp: Path, server: S3Server):
        self.tmp, self.server = tmp, server
        self.env = environment(tmp / "home", server)
        self.count = 0

    def sh(self, *cmd, cwd) -> float:
        """Run ``cmd``; its wall time in seconds. A failure stops the benchmark."""
        start = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        took = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"error: {' '.join(map(str, cmd))} failed:\n{proc.stdout}{proc.stderr}")
        return took

    def dvc(self, *args, cwd) -> float:
        return self.sh(sys.executable, "-m", "dvc", *args, cwd=cwd)

    def clone(self, source: Path, prefix: str) -> Path:
        self.count += 1
        dest = self.tmp / f"clone{self.count}"
        self.sh("git", "clone", "-q", str(source), str(dest), cwd=self.tmp)
        for args in (
            ("endpointurl", self.server.endpoint),
            ("url", f"s3://{self.server.bucket}/{prefix}"),
        ):
            self.dvc("remote", "modify", "--local", "s3", *args, cwd=dest)
        self.dvc("remote", "default", "--local", "s3", cwd=dest)
        return dest

    def predict(self, repo: Path) -> float:
        cli = Path(sys.executable).parent / "cali-reg"
        return self.sh(cli, "predict", "--sample", "5", cwd=repo)


def outputs_size(repo: Path) -> tuple[int, int]:
    files = [p for p in (repo / ".dvc" / "cache" / "files").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help=f"runs per figure, 1 to {MAX_RUNS}")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be from 1 to {MAX_RUNS}")

    tmp = Path(tempfile.mkdtemp(prefix="cali-reg-bench-remote-"))
    (tmp / "home").mkdir()
    try:
        start = time.perf_counter()
        with S3Server(tmp / "s3") as server:
            ready = time.perf_counter() - start
            bench = Bench(tmp, server)
            built = bench.clone(ROOT, "push-0")
            bench.dvc("repro", cwd=built)
            files, size = outputs_size(built)

            push, pull, by_pull, by_repro = [], [], [], []
            for run in range(args.runs):
                url = f"s3://{server.bucket}/push-{run}"
                bench.dvc("remote", "modify", "--local", "s3", "url", url, cwd=built)
                push.append(bench.dvc("push", cwd=built))

                def via_pull(run=run):
                    repo = bench.clone(built, f"push-{run}")
                    took = bench.dvc("pull", cwd=repo)
                    pull.append(took)
                    by_pull.append(took + bench.predict(repo))

                def via_repro():
                    repo = bench.clone(built, "unused")
                    by_repro.append(bench.dvc("repro", cwd=repo) + bench.predict(repo))

                for measure in (via_pull, via_repro) if run % 2 == 0 else (via_repro, via_pull):
                    measure()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    mib = size / 2**20
    print(
        f"S3 server (SeaweedFS, 127.0.0.1) ready in {ready:.1f} s; "
        f"{files} files, {mib:.1f} MiB of outputs; medians of {args.runs} runs\n"
    )
    print("| what | time (s) |")
    print("| --- | --- |")
    print(f"| fresh clone to a working predictor by `dvc pull` | {med(by_pull):.2f} |")
    print(f"| fresh clone to a working predictor by `dvc repro` | {med(by_repro):.2f} |")
    print(f"| ratio pull / repro | {med(by_pull) / med(by_repro):.2f} |")
    outputs = f"{files} files, {mib:.1f} MiB"
    print(f"| `dvc push`, all outputs ({outputs}) to an empty prefix | {med(push):.2f} |")
    print(f"| `dvc pull`, all outputs into an empty cache and workspace | {med(pull):.2f} |")


if __name__ == "__main__":
    main()
