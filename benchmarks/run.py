"""Benchmark: speed of the pipeline under DVC, of the predictor, and growth with data size.

    python benchmarks/run.py [--runs 5] [--only rerun,overhead,inference,coldstart,scale]

Not part of the test suite. DVC figures are measured in a temporary clone of HEAD
(built once with ``dvc repro``), never in the working tree; uncommitted changes are
not measured. Every figure is the median of ``--runs`` runs, and the two sides of a
ratio are measured alternately in the same run, so that a busy machine slows both.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from tests.helpers import project_env

SECTIONS = ("rerun", "overhead", "startup", "inference", "coldstart", "scale")
INFERENCE_ROWS = 1_000_000
SCALE_ROWS = 2_000_000
SCALE_STAGES = ("split", "train", "evaluate")  # quantize reads no data: run, not timed


ENV = project_env(write_bytecode=True)


def sh(cmd, cwd, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` (a list, or a string for the shell) and stop the benchmark if it fails."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=kw.pop("env", ENV),
        shell=isinstance(cmd, str),
        capture_output=True,
        text=True,
        **kw,
    )
    if proc.returncode != 0:
        sys.exit(
            f"benchmark: {cmd} failed in {cwd} (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc


def wall(cmd, cwd) -> float:
    start = time.perf_counter()
    sh(cmd, cwd)
    return time.perf_counter() - start


def dvc(*args) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def alternate(runs: int, *measures) -> list[float]:
    """Median of each measure over ``runs`` rounds, the measures taking turns in each round."""
    times = [[] for _ in measures]
    for _ in range(runs):
        for sample, measure in zip(times, measures, strict=True):
            sample.append(measure())
    return [statistics.median(t) for t in times]


class Table:
    def __init__(self):
        self.rows = []

    def add(self, what, value, against, ratio, target, ok):
        if ratio is None:  # a plain measurement, no target
            self.rows.append((what, value, "", "", "", ""))
            print(f"  {what}: {value}", flush=True)
            return
        self.rows.append((what, value, against, f"{ratio:.2f}", target, "PASS" if ok else "MISS"))
        print(
            f"  {what}: {value} against {against}: {ratio:.2f} ({target}) "
            f"{'PASS' if ok else 'MISS'}",
            flush=True,
        )

    def markdown(self) -> str:
        head = ("measure", "median", "against (median)", "ratio", "target", "")
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


# --- the built repo ---------------------------------------------------------


def built_clone(tmp: Path) -> tuple[Path, list[str]]:
    """A clone of HEAD after ``dvc repro -f``, and the stages in the order DVC ran them."""
    if sh(["git", "status", "--porcelain", "--untracked-files=no"], ROOT).stdout.strip():
        print(
            "note: the working tree has uncommitted changes; the clone measures HEAD",
            file=sys.stderr,
        )
    repo = tmp / "repo"
    sh(["git", "clone", "-q", str(ROOT), str(repo)], tmp)
    order = re.findall(r"Running stage '([\w@.-]+)'", sh(dvc("repro", "-f"), repo).stdout)
    return repo, order


def reset(repo: Path) -> None:
    """Back to the committed, built state (what ``dvc repro`` on HEAD produces)."""
    sh(["git", "reset", "-q", "--hard"], repo)
    sh(dvc("checkout", "--force", "--quiet"), repo)


def stage_commands(repo: Path, order: list[str]) -> list[str]:
    import yaml

    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    cmds = []
    for name in order:
        cmd = stages[name]["cmd"]
        cmds.extend(cmd if isinstance(cmd, list) else [cmd])
    return cmds


# --- 1 and 2: DVC -----------------------------------------------------------


def bench_rerun(table: Table, repo: Path, runs: int) -> None:
    def experiment():
        reset(repo)
        return wall(dvc("exp", "run", "-S", "quantize.margin=0.01"), repo)

    def everything():
        reset(repo)
        return wall(dvc("repro", "-f"), repo)

    exp, full = alternate(runs, experiment, everything)
    reset(repo)
    table.add(
        "`dvc exp run -S quantize.margin=0.01`",
        f"{exp:.2f} s",
        f"`dvc repro -f` {full:.2f} s",
        exp / full,
        "≤ 0.5",
        exp / full <= 0.5,
    )


def bench_overhead(table: Table, repo: Path, order: list[str], runs: int) -> None:
    reset(repo)
    noop, status = alternate(
        runs, lambda: wall(dvc("repro"), repo), lambda: wall(dvc("status"), repo)
    )
    table.add(
        "no-op `dvc repro`",
        f"{noop:.2f} s",
        f"`dvc status` {status:.2f} s",
        noop / status,
        "≤ 1.3",
        noop / status <= 1.3,
    )

    cmds = stage_commands(repo, order)

    def direct():
        start = time.perf_counter()
        for cmd in cmds:
            sh(cmd, repo)
        return time.perf_counter() - start

    full, bare = alternate(runs, lambda: wall(dvc("repro", "-f"), repo), direct)
    table.add(
        "`dvc repro -f`",
        f"{full:.2f} s",
        f"the {len(cmds)} stage commands run directly {bare:.2f} s",
        full / bare,
        "≤ 1.3",
        full / bare <= 1.3,
    )


def bench_startup(table: Table, repo: Path, order: list[str], runs: int, base: Path | None) -> None:
    """Start-up of each stage: a fresh interpreter importing the stage module, nothing run.

    With ``base`` (a checkout of an earlier commit), the same stage there is timed in
    turn with this one, and the ratio says whether the stages start slower now.
    """
    for name in order:
        cmd = [sys.executable, "-c", f"import stages.{name}"]
        if base is None or not (base / "stages" / f"{name}.py").exists():  # new since base
            (took,) = alternate(runs, lambda cmd=cmd: wall(cmd, repo))
            table.add(f"start-up of stage `{name}` (import)", f"{took:.3f} s", "", None, "", None)
            continue
        now, before = alternate(
            runs, lambda cmd=cmd: wall(cmd, repo), lambda cmd=cmd: wall(cmd, base)
        )
        table.add(
            f"start-up of stage `{name}` (import)",
            f"{now:.3f} s",
            f"at the base commit {before:.3f} s",
            now / before,
            "≤ 1.1",
            now / before <= 1.1,
        )


# --- 3 and 4: inference -----------------------------------------------------

# Each predictor runs in a process of its own: OpenBLAS threads spin for a while
# after a BLAS call, and in a shared process they would take the second core from
# whichever single-threaded predictor is timed next.
INFERENCE_CHILD = """
import statistics, sys, time
import numpy as np
import joblib

from tests.helpers import project_env
from cali_reg.model import load_model
X = np.load(sys.argv[1])
qmodel = load_model("models/quant.json")
w, b = qmodel.coef, qmodel.intercept
if sys.argv[2] == "quant":
    predict = qmodel.predict
elif sys.argv[2] == "sklearn":
    predict = joblib.load("models/float.joblib").predict
else:
    predict = lambda X: X @ w + b
predict(X)  # warm up: first-touch page faults, BLAS thread start
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    predict(X)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def bench_inference(table: Table, repo: Path, tmp: Path, runs: int) -> None:
    X = np.random.default_rng(0).normal(size=(INFERENCE_ROWS, 8))
    np.save(tmp / "X.npy", X)

    def timed(which, env=None):
        cmd = [sys.executable, "-c", INFERENCE_CHILD, str(tmp / "X.npy"), which, "5"]
        return lambda: float(sh(cmd, repo, env=dict(env or ENV, PYTHONPATH=str(repo))).stdout)

    one_thread = dict(ENV, OPENBLAS_NUM_THREADS="1")
    q, sk, bare, bare1 = alternate(
        runs, timed("quant"), timed("sklearn"), timed("bare"), timed("bare", one_thread)
    )
    rate = INFERENCE_ROWS / 1e6
    table.add(
        "quantised predictor, rows/s",
        f"{rate / q:.0f} M",
        f"sklearn `LinearRegression.predict` {rate / sk:.0f} M",
        sk / q,
        "≥ 1.0",
        sk / q >= 1.0,
    )
    table.add(
        "quantised predictor, rows/s",
        f"{rate / q:.0f} M",
        f"bare `X @ w + b` {rate / bare:.0f} M",
        bare / q,
        "≥ 0.5",
        bare / q >= 0.5,
    )
    table.add(
        "quantised predictor, rows/s",
        f"{rate / q:.0f} M",
        f"bare `X @ w + b` with OPENBLAS_NUM_THREADS=1 {rate / bare1:.0f} M",
        bare1 / q,
        "≥ 0.5",
        bare1 / q >= 0.5,
    )


FIRST_ROW = (
    "MedInc,HouseAge,AveRooms,AveBedrms,Population,AveOccup,Latitude,Longitude\n"
    "8.3252,41.0,6.984126984126984,1.0238095238095237,322.0,2.5555555555555554,37.88,-122.23\n"
)
SKLEARN_PREDICTOR = """
import sys
import numpy as np

from tests.helpers import project_env
import joblib
import sklearn.linear_model
model = joblib.load("models/float.joblib")
X = np.loadtxt(sys.stdin, delimiter=",", skiprows=1, ndmin=2)
for y in model.predict(X):
    print(y, flush=True)
"""


def first_line_time(cmd, cwd) -> float:
    """Seconds from starting ``cmd`` to its first line on stdout, given ``FIRST_ROW`` on stdin."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write(FIRST_ROW)
    proc.stdin.close()
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.wait() != 0 or not line.strip():
        sys.exit(f"benchmark: {cmd} printed no prediction:\n{err}")
    float(line)  # a prediction, not a message
    return elapsed


def bench_coldstart(table: Table, repo: Path, runs: int) -> None:
    numpy_only = [sys.executable, "-m", "cali_reg", "predict", "--model", "quant"]
    with_sklearn = [sys.executable, "-c", SKLEARN_PREDICTOR]
    fast, slow = alternate(
        runs, lambda: first_line_time(numpy_only, repo), lambda: first_line_time(with_sklearn, repo)
    )
    table.add(
        "cold start to first prediction, `cali-reg predict`",
        f"{fast:.3f} s",
        f"a predictor importing scikit-learn {slow:.3f} s",
        slow / fast,
        "≥ 3 (faster)",
        slow / fast >= 3,
    )


# --- 5: scale ---------------------------------------------------------------

# Runs one stage's main(), then reports the peak memory of this process since exec
# (VmHWM; ru_maxrss would include the parent's memory from before exec).
STAGE_RUNNER = """
import importlib, sys
from cali_reg.errors import run
try:
    run(importlib.import_module("stages." + sys.argv[2]).main)
finally:
    status = open("/proc/self/status").read()
    print(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
"""


def run_measured(cmd, cwd, env) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one stage process."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark: {cmd} failed: {proc.stderr}")
    return elapsed, int(proc.stdout.split()[-1]) / 1024  # VmHWM is in kB


def synthetic_housing(real: Path, n_rows: int, out: Path) -> None:
    """``n_rows`` rows drawn with replacement from the real data set (seed 0), written with
    the project's own writer: same columns, value ranges and CSV widths as the real file."""
    from cali_reg.data import COLUMNS, read_table, write_table

    table = read_table(real)
    rows = np.random.default_rng(0).integers(0, len(table), n_rows)
    write_table(out, COLUMNS, table[rows])


def bench_scale(repo: Path, tmp: Path, runs: int) -> str:
    with (repo / "data/housing.csv").open() as fh:
        n_real = sum(1 for _ in fh) - 1  # the header
    env = dict(ENV, PYTHONPATH=str(repo))
    sizes = (n_real, SCALE_ROWS // 4, SCALE_ROWS)
    results = {}
    for n_rows in sizes:
        work = tmp / f"scale-{n_rows}"
        (work / "data").mkdir(parents=True)
        shutil.copy(repo / "params.yaml", work / "params.yaml")
        if n_rows == n_real:
            shutil.copy(repo / "data/housing.csv", work / "data/housing.csv")
        else:
            synthetic_housing(repo / "data/housing.csv", n_rows, work / "data/housing.csv")
        for stage in ("split", "train", "quantize", "evaluate"):
            cmd = [sys.executable, "-c", STAGE_RUNNER, str(n_rows), stage]
            if stage not in SCALE_STAGES:
                run_measured(cmd, work, env)
                continue
            samples = [run_measured(cmd, work, env) for _ in range(runs)]
            results[n_rows, stage] = tuple(statistics.median(v) for v in zip(*samples, strict=True))
            print(
                f"  {stage} on {n_rows:,} rows: {results[n_rows, stage][0]:.2f} s, "
                f"{results[n_rows, stage][1]:.0f} MiB",
                flush=True,
            )
        shutil.rmtree(work)
    small, mid, big = sizes
    head = (
        ["stage"]
        + [f"{n:,} rows" for n in sizes]
        + [
            f"{mid:,} → {big:,}: time ×",
            "memory ×",
            f"time × beyond the {small:,}-row run",
            "memory × beyond it",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for stage in SCALE_STAGES:
        cells = [f"{results[n, stage][0]:.2f} s, {results[n, stage][1]:.0f} MiB" for n in sizes]
        (t0, m0), (t1, m1), (t2, m2) = (results[n, stage] for n in sizes)
        lines.append(
            f"| {stage} | " + " | ".join(cells) + f" | {t2 / t1:.1f} | {m2 / m1:.1f} | "
            f"{(t2 - t0) / max(t1 - t0, 1e-3):.1f} | {(m2 - m0) / max(m1 - m0, 1):.1f} |"
        )
    lines.append(
        f"\nRows grow × {big // mid} from {mid:,} to {big:,}. The {small:,}-row run is "
        "almost all fixed cost (interpreter, imports, params), so the growth of what "
        "lies beyond it shows whether the work itself grows linearly (× 4)."
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument(
        "--base",
        metavar="REV",
        help="with startup: time each stage's start-up against this commit too, side by side",
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS)
    )
    args = parser.parse_args(argv)
    sections = args.only.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown or args.runs < 1:
        parser.error(f"unknown section {sorted(unknown)}" if unknown else "--runs must be ≥ 1")

    print(
        f"cali-reg benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, median of {args.runs} runs",
        flush=True,
    )
    table = Table()
    scale = None
    with tempfile.TemporaryDirectory(prefix="cali-reg-bench.") as tmp:
        tmp = Path(tmp)
        repo, order = built_clone(tmp)
        if "rerun" in sections:
            bench_rerun(table, repo, args.runs)
        if "overhead" in sections:
            bench_overhead(table, repo, order, args.runs)
        if "startup" in sections:
            base = None
            if args.base:
                base = tmp / "base"
                sh(["git", "clone", "-q", str(ROOT), str(base)], tmp)
                sh(["git", "checkout", "-q", args.base], base)
            bench_startup(table, repo, order, args.runs, base)
        if "inference" in sections:
            bench_inference(table, repo, tmp, args.runs)
        if "coldstart" in sections:
            bench_coldstart(table, repo, args.runs)
        if "scale" in sections:
            scale = bench_scale(repo, tmp, args.runs)
    print()
    if table.rows:
        print(table.markdown())
    if scale:
        print()
        print(scale)


if __name__ == "__main__":
    main()
