"""Hardening, end to end: killed runs, tampered artefacts, queued experiments in parallel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    call_cli,
    call_stage,
    copy_built,
    dvc,
    project_env,
    read_json,
    run_stages,
    set_params,
)

OUTPUT_GLOBS = ("data/*.csv", "models/*", "metrics/*.json", "plots/*.csv")


def outputs(repo: Path) -> dict[str, bytes]:
    """Every pipeline output and dvc.lock, by path. Hidden temp files are not outputs."""
    files = [p for pattern in OUTPUT_GLOBS for p in repo.glob(pattern)] + [repo / "dvc.lock"]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files}


def one_line_error(proc, *named):
    """The stage refused: exit 2, one line on stderr naming each of ``named``, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in named:
        assert word in lines[0]
    assert proc.stdout == ""


# --- interrupted runs -------------------------------------------------------

# Loaded by every Python process of the run through PYTHONPATH (the stages and DVC
# itself): when the atomic writer syncs the temp file named by STALL_ON, it signals
# READY and stalls, so that the test can SIGKILL the run at exactly that point.
STALL_HOOK = """
import os, time
_target = os.environ.get("CALI_REG_STALL_ON")
if _target:
    _fsync = os.fsync
    def fsync(fd):
        _fsync(fd)
        if _target in os.readlink(f"/proc/self/fd/{fd}"):
            open(os.environ["CALI_REG_STALL_READY"], "w").close()
            time.sleep(300)
    os.fsync = fsync
"""


def kill_repro_while_writing(repo: Path, hook_dir: Path, target: str) -> None:
    """Run ``dvc repro`` and SIGKILL it, with its stage, while ``target`` is being written."""
    ready = hook_dir / "ready"
    ready.unlink(missing_ok=True)
    env = project_env() | {
        "PYTHONPATH": str(hook_dir),
        "CALI_REG_STALL_ON": target,
        "CALI_REG_STALL_READY": str(ready),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"dvc repro ended before writing {target}:\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"dvc repro did not reach {target} in 120 s")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # DVC and the stage it runs
        proc.wait()
        proc.stdout.close()


@pytest.mark.slow
def test_repro_killed_mid_write_leaves_whole_files_and_recovers(repo, tmp_path):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(STALL_HOOK)
    before = outputs(repo)
    reference = copy_built(repo, tmp_path / "reference")  # never killed
    # New params, so that old and new outputs differ and a mix of them would show.
    for project in (repo, reference):
        set_params(project, split={"seed": 7}, quantize={"bits": 6})

    # 1: killed in the split stage, train.csv replaced, test.csv not yet.
    kill_repro_while_writing(repo, tmp_path / "hook", "data/.test.csv.")
    after_split_kill = outputs(repo)
    assert after_split_kill["data/train.csv"] != before["data/train.csv"]
    assert after_split_kill["data/test.csv"] == before["data/test.csv"]
    assert list((repo / "data").glob(".test.csv.*.tmp")), "the kill left no temp file"

    # 2: the next run killed in evaluate, between two metrics files.
    kill_repro_while_writing(repo, tmp_path / "hook", "metrics/.quant.json.")
    after_evaluate_kill = outputs(repo)
    assert after_evaluate_kill["metrics/float.json"] != before["metrics/float.json"]
    assert after_evaluate_kill["metrics/quant.json"] == before["metrics/quant.json"]

    # 3: the next plain run completes, with dvc.lock in step with its outputs, which are
    # those of the stages the new params touch, run in order in a copy never killed.
    # (Not data or robustness: they read neither split.seed nor quantize.bits, so no run
    # above ran them; tests/test_pipeline.py forces the whole pipeline.)
    ran = dvc("repro", cwd=repo).stdout
    recovered = outputs(repo)
    assert "up to date" in dvc("status", cwd=repo).stdout
    assert "Running stage 'robustness'" not in ran and "Running stage 'data'" not in ran, ran
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    run_stages(reference, *(s for s in stages if s not in ("data", "robustness")))
    assert {p: b for p, b in outputs(reference).items() if p != "dvc.lock"} == {
        p: b for p, b in recovered.items() if p != "dvc.lock"
    }

    # No output was ever half-written: each was the old or the new one, whole. (DVC
    # records each stage in dvc.lock as it completes, so that one is a third state.)
    for snapshot in (after_split_kill, after_evaluate_kill):
        assert "evaluate" in yaml.safe_load(snapshot.pop("dvc.lock"))["stages"]
        for path, content in snapshot.items():
            assert content in (before.get(path), recovered[path]), path
    assert read_json(repo / "metrics/quant.json") != json.loads(before["metrics/quant.json"])


# --- tampered artefacts -----------------------------------------------------


def edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def first_code_sign_then_zeros(doc) -> None:
    # the first packed code becomes its sign bit then zeros, a pattern no format writes:
    # pow2's symmetric two's complement never holds -2**(b-1), a minifloat never a -0
    bits, codes = doc["bits"], doc["arrays"]["codes"]["values"]
    stream = "".join(f"{byte:08b}" for byte in codes)
    tampered = "1" + "0" * (bits - 1) + stream[bits:]
    assert tampered != stream, "the first code already is a sign bit then zeros"
    codes[:] = [int(tampered[i : i + 8], 2) for i in range(0, len(tampered), 8)]


# What each format's loader says of that code; a default model of a format without
# such a code (affine, window: every unsigned code is valid) needs another tamper here.
SIGN_THEN_ZEROS_REFUSED = {
    "pow2": "a code is outside the symmetric",
    "e3_s8_f16": "a code is a negative zero",
    "e3_t4_fix12": "a code is a negative zero",
    "e2_t4_fix12": "a code is a negative zero",
}


TAMPERED_MODELS = {
    "bad JSON": (lambda p: p.write_text(p.read_text()[:-20]), "corrupt or truncated"),
    "wrong shape": (
        lambda p: edit_json(p, lambda d: d["arrays"]["codes"]["values"].pop()),
        "array 'codes' must be",
    ),
    "wrong version": (
        lambda p: edit_json(p, lambda d: d.update(version=2)),
        "format version 2 is not supported",
    ),
    "code never written": (
        lambda p: edit_json(p, first_code_sign_then_zeros),
        SIGN_THEN_ZEROS_REFUSED,  # by the model file's scheme
    ),
    "negative code": (
        lambda p: edit_json(p, lambda d: d["arrays"]["codes"]["values"].__setitem__(0, -1)),
        "do not fit uint",
    ),
}


@pytest.mark.parametrize("case", TAMPERED_MODELS)
def test_tampered_quantized_model_is_refused_by_evaluate_and_predictor(repo, case):
    tamper, message = TAMPERED_MODELS[case]
    if isinstance(message, dict):
        scheme = json.loads((repo / "models/quant.json").read_text())["scheme"]
        assert scheme in message, f"no tamper written for a default {scheme} model"
        message = message[scheme]
    tamper(repo / "models/quant.json")
    before = outputs(repo)
    for proc in (call_stage("evaluate", repo), call_cli(["predict", "--sample", "3"], repo)):
        one_line_error(proc, "models/quant.json", message)
    assert outputs(repo) == before


def header_only(path: Path) -> None:
    path.write_text(path.read_text().splitlines(keepends=True)[0])


def wrong_header(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[0].replace("MedInc", "Income"), *lines[1:]]))


def drop_a_coefficient(path: Path) -> None:
    edit_json(path, lambda d: d["coef"].pop())


def nan_in_row_3(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "nan," + lines[3].split(",", 1)[1]
    path.write_text("".join(lines))


TAMPERED_DATA = [  # (stage that reads it, file, edit, what the line says)
    ("split", "data/housing.csv", header_only, "has no rows"),
    ("split", "data/housing.csv", nan_in_row_3, "row 3 column MedInc is not a finite number"),
    ("train", "data/train.csv", wrong_header, "header is 'Income,"),
    ("train", "data/train.csv", nan_in_row_3, "row 3 column MedInc is not a finite number"),
    ("evaluate", "data/test.csv", header_only, "has no rows"),
    ("evaluate", "data/test.csv", nan_in_row_3, "row 3 column MedInc is not a finite number"),
    ("quantize", "models/float.json", drop_a_coefficient, "holds 8 names for 7 coefficients"),
]


@pytest.mark.parametrize(
    "stage,path,tamper,message",
    TAMPERED_DATA,
    ids=[f"{c[0]}-{c[2].__name__}" for c in TAMPERED_DATA],
)
def test_tampered_data_is_refused_by_the_stage_that_reads_it(
    repo, built_repo, stage, path, tamper, message
):
    tamper(repo / path)
    before = outputs(repo)
    one_line_error(call_stage(stage, repo), path, message)
    assert outputs(repo) == before
    if tamper is next(t for _, p, t, _ in TAMPERED_DATA if p == path):
        # DVC sees the edited file and rebuilds it from its own stage: the pipeline heals
        # (once per file: how the file was edited makes no difference to DVC's hash).
        assert "Running stage" in dvc("repro", cwd=repo).stdout
        assert outputs(repo) == outputs(built_repo)
