"""End to end: the real pipeline, run with DVC in a copy of the project."""

import json
import platform
import re
import warnings

import joblib
import numpy as np
import pytest
import yaml

from cali_reg.model import load_model
from tests.helpers import call_stage, dvc, read_json, run_stages, set_params, sh

# Reference figures of the data set (../shared/data/README.md), not of this code.
FLOAT_R2, FLOAT_RMSE, INTERCEPT = 0.5758, 0.7456, -37.0233
FIRST_PREDICTIONS = [0.719, 1.764, 2.71, 2.839, 2.605]
SEED_WINDOW_R2, SEED_WINDOW_RMSE = 0.4854, 0.8212
METRIC_KEYS = {"r2", "rmse", "mae", "payload_bytes", "file_bytes"}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def test_float_model_matches_reference(built_repo):
    m = read_json(built_repo / "metrics/float.json")
    assert m["r2"] == pytest.approx(FLOAT_R2, abs=5e-5)
    assert m["rmse"] == pytest.approx(FLOAT_RMSE, abs=5e-5)
    assert m["payload_bytes"] == 9 * 8  # 8 float64 coefficients + intercept
    assert m["file_bytes"] == (built_repo / "models/float.joblib").stat().st_size
    # the pipeline's own output, not an untrusted pickle
    intercept = joblib.load(built_repo / "models/float.joblib").intercept_
    assert intercept == pytest.approx(INTERCEPT, abs=5e-5)
    preds = np.loadtxt(built_repo / "plots/predictions.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(preds[:5, 1], FIRST_PREDICTIONS, atol=5e-4)


def test_metrics_files_share_keys_and_compare_is_consistent(built_repo):
    f = read_json(built_repo / "metrics/float.json")
    q = read_json(built_repo / "metrics/quant.json")
    c = read_json(built_repo / "metrics/compare.json")
    assert set(f) == set(q) and set(f) >= METRIC_KEYS
    assert c["delta_r2"] == pytest.approx(q["r2"] - f["r2"], abs=2e-6)
    assert c["delta_rmse"] == pytest.approx(q["rmse"] - f["rmse"], abs=2e-6)
    assert c["size_ratio"] == pytest.approx(q["payload_bytes"] / f["payload_bytes"], abs=1e-6)
    preds = np.loadtxt(built_repo / "plots/predictions.csv", delimiter=",", skiprows=1)
    assert c["max_abs_pred_diff"] == pytest.approx(
        np.abs(preds[:, 2] - preds[:, 1]).max(), abs=2e-6
    )


def test_metrics_show_lists_both_models(built_repo):
    out = dvc("metrics", "show", cwd=built_repo).stdout
    assert "metrics/float.json" in out and "metrics/quant.json" in out


# Targets of the default (sound) scheme at a fixed width, from issue 11 (on this split; the
# 20-split figures are tests/test_robustness.py's): float64 parameters are 72 B.
TARGETS = {8: (0.001, 20), 4: (0.005, 16)}  # bits: (max |delta R2|, max payload_bytes)


def check_target(repo, bits):
    f = read_json(repo / "metrics/float.json")
    q = read_json(repo / "metrics/quant.json")
    max_delta, max_payload = TARGETS[bits]
    assert abs(q["r2"] - f["r2"]) <= max_delta, (q, f)
    assert q["payload_bytes"] <= max_payload, q
    assert q["bits"] == bits == stored_bits(repo)


def stored_bits(repo) -> int:
    return load_model(repo / "models/quant.json").bits


# The training R² loss of the saved model, and the smallest of every smaller candidate's.
LOSSES = """
import yaml
from cali_reg.data import read_xy
from cali_reg.model import FloatModel, QuantizedModel, load_model
from cali_reg.quantize import candidates, payload_bytes, quantize, training_loss
params = yaml.safe_load(open("params.yaml"))["quantize"]
settings = {k: params[k] for k in ("padding", "half_width", "rounding", "refit_intercept")}
f = load_model("models/float.json", expect=FloatModel)
q = load_model("models/quant.json", expect=QuantizedModel)
X, y = read_xy("data/train.csv")
smaller = [quantize(f.coef, f.intercept, scheme=s, bits=b, calibration=(X, y),
                    feature_names=f.feature_names, **settings)
           for s, b in candidates("auto", "auto", 8) if payload_bytes(s, b, 8) < q.payload_bytes]
print(training_loss(q, f.coef, f.intercept, X, y))
print(min(training_loss(m, f.coef, f.intercept, X, y) for m in smaller))
"""


def test_default_run_picks_the_smallest_payload_within_the_margin(built_repo):
    params = yaml.safe_load((built_repo / "params.yaml").read_text())["quantize"]
    assert params["scheme"] == params["bits"] == "auto" and params["margin"] > 0
    q = read_json(built_repo / "metrics/quant.json")
    assert q["bits"] == stored_bits(built_repo) and q["payload_bytes"] <= 12
    loss, smaller_loss = map(float, sh(["python", "-c", LOSSES], built_repo).stdout.split())
    assert loss <= params["margin"] < smaller_loss


def test_default_quantize_prints_nothing(repo):
    proc = call_stage("quantize", repo)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""


@pytest.mark.parametrize("bits", sorted(TARGETS))
def test_pow2_meets_the_targets_at_8_and_4_bits(repo, bits):
    set_params(repo, quantize={"scheme": "pow2", "bits": bits})
    run_stages(repo, "quantize", "evaluate")
    check_target(repo, bits)


def test_a_larger_margin_gives_a_smaller_model_and_metrics_diff_shows_it(repo):
    before = read_json(repo / "metrics/quant.json")
    out = dvc("exp", "run", "-S", "quantize.margin=0.01", cwd=repo).stdout
    assert stages_run(out) == {"quantize", "evaluate", "card"}
    after = read_json(repo / "metrics/quant.json")
    assert after["payload_bytes"] < before["payload_bytes"] and after["r2"] != before["r2"]
    diff = dvc("metrics", "diff", "--json", cwd=repo).stdout
    changed = json.loads(diff)["metrics/quant.json"]
    assert {"payload_bytes", "r2"} <= set(changed)
    assert changed["payload_bytes"] == {
        "old": before["payload_bytes"],
        "new": after["payload_bytes"],
        "diff": after["payload_bytes"] - before["payload_bytes"],
    }


def test_a_width_the_format_does_not_offer_is_refused_in_one_line(repo):
    set_params(repo, quantize={"scheme": "e3_t4_fix12", "bits": 3})
    proc = call_stage("quantize", repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "quantize.bits = 3 is not allowed" in proc.stderr


def test_the_seeds_experiment_reruns_only_quantize_evaluate_and_card_and_gives_its_figures(repo):
    float_before = (repo / "metrics/float.json").read_text()
    # The seed's figures, by the one-line experiment docs/quantisation.md gives: the seed's
    # half-width is quantize.half_width's default, 0.05; window ignores the other keys.
    out = dvc("exp", "run", "-S", "quantize.scheme=window", "-S", "quantize.bits=8", cwd=repo)
    assert stages_run(out.stdout) == {"quantize", "evaluate", "card"}
    assert (repo / "metrics/float.json").read_text() == float_before
    q = read_json(repo / "metrics/quant.json")
    assert q["r2"] == pytest.approx(SEED_WINDOW_R2, abs=5e-5)
    assert q["rmse"] == pytest.approx(SEED_WINDOW_RMSE, abs=5e-5)
    assert q["payload_bytes"] == 9 + 9 * 4 + 9 * 4  # uint8 codes, float32 min and scale
    diff = dvc("metrics", "diff", cwd=repo).stdout
    assert "metrics/quant.json" in diff and "metrics/float.json" not in diff
    shown = dvc("exp", "show", "--md", cwd=repo).stdout
    assert "quantize.scheme" in shown and "window" in shown


def test_the_windows_half_width_is_its_own_key(repo):
    set_params(repo, quantize={"scheme": "window", "bits": 8, "half_width": 0.01})
    run_stages(repo, "quantize", "evaluate")
    assert read_json(repo / "metrics/quant.json")["r2"] == pytest.approx(0.571, abs=0.002)


RAW_FIT = (
    "import sys; from sklearn.linear_model import LinearRegression; "
    "from cali_reg.data import read_xy; "
    "m = LinearRegression().fit(*read_xy('data/train.csv')); "
    "print([float(v).hex() for v in m.coef_])"
)
X86_64 = platform.machine() in ("x86_64", "AMD64")


def other_cpu_env() -> dict:
    """Env vars that make this machine compute like an old x86-64 CPU.

    OpenBLAS (under numpy and scipy) picks its SSE3 kernels, and numpy its
    baseline loops instead of the AVX2/AVX-512 ones: the BLAS and SIMD paths
    in which GitHub's runners (or any other machine) may differ from this one.
    """
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    dispatched = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return {"OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": " ".join(dispatched)}


def output_bytes(repo) -> dict[str, bytes]:
    """dvc.lock and every pipeline output, by path."""
    patterns = ("data/*.csv", "models/*", "metrics/*.json", "plots/*.csv")
    paths = ["dvc.lock", *(str(p.relative_to(repo)) for g in patterns for p in repo.glob(g))]
    return {p: (repo / p).read_bytes() for p in sorted(paths)}


@pytest.mark.slow
def test_a_forced_rebuild_under_other_blas_kernels_gives_the_same_bytes(repo, monkeypatch):
    """The built copy's outputs are the working tree's (in CI, those of setup.sh's
    ``dvc repro`` on a fresh clone, which the gate has found equal to the commit); a
    ``dvc repro -f`` here rebuilds all of them on x86-64 under the BLAS kernels and SIMD
    loops of an old CPU (where GitHub's runners, or any other machine, may differ from
    this one), with one BLAS thread (conftest.py), and gives the same bytes."""
    first = output_bytes(repo)
    assert {"data/housing.csv", "models/quant.json", "plots/predictions.csv"} <= set(first)
    other_kernels = False
    if X86_64:
        raw_here = sh(["python", "-c", RAW_FIT], repo).stdout
        for name, value in other_cpu_env().items():
            monkeypatch.setenv(name, value)
        other_kernels = sh(["python", "-c", RAW_FIT], repo).stdout != raw_here
        if not other_kernels:
            warnings.warn(
                "OPENBLAS_CORETYPE changed nothing here: the rebuild is a plain one", stacklevel=1
            )
    ran = dvc("repro", "-f", cwd=repo).stdout
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert ran.count("Running stage") == len(stages), ran
    second = output_bytes(repo)
    assert set(second) == set(first)
    for path, content in first.items():
        assert second[path] == content, (path, "other kernels" if other_kernels else "")


BAD_PARAMS = [
    ("split", "test_size", 1.0, "split.test_size"),
    ("split", "test_size", 0, "split.test_size"),
    ("split", "seed", "42", "split.seed"),
    ("quantize", "bits", 1, "quantize.bits"),
    ("quantize", "bits", 17, "quantize.bits"),
    ("quantize", "bits", 8.0, "quantize.bits"),
    ("quantize", "bits", "eight", "quantize.bits"),
    ("quantize", "padding", 0, "quantize.padding"),
    ("quantize", "half_width", -0.05, "quantize.half_width"),
    ("quantize", "margin", "0.1", "quantize.margin"),
    ("quantize", "margin", -0.1, "quantize.margin"),
    ("quantize", "scheme", "nonsense", "quantize.scheme"),
    ("quantize", "bitz", 8, "quantize.bitz"),
    ("quantize", "refit_intercept", "yes", "quantize.refit_intercept"),
    ("quantize", "rounding", "floor", "quantize.rounding"),
]
# Also through `dvc repro`, one per stage: that DVC shows the stage's one line and keeps
# the outputs is the same for every param. The two where DVC's own reading of the value
# could differ from the stage's: a number as a string, and 8.0, which DVC takes for 8.
THROUGH_DVC = {("split", "seed", "42"), ("quantize", "bits", 8.0)}


@pytest.mark.parametrize("section,key,value,named", BAD_PARAMS)
def test_bad_param_stops_with_one_line_and_keeps_outputs(repo, section, key, value, named):
    outputs = ["data/train.csv", "models/quant.json", "metrics/quant.json", "dvc.lock"]
    before = {p: (repo / p).read_bytes() for p in outputs}
    set_params(repo, **{section: {key: value}})
    stage = "split" if section == "split" else "quantize"
    proc = call_stage(stage, repo)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0]
    if (section, key, value) in THROUGH_DVC:
        # forced: DVC itself sees 8.0 == 8 and would skip the stage
        repro = dvc("repro", "-f", "-s", stage, cwd=repo, check=False)
        assert repro.returncode != 0 and "Traceback" not in repro.stderr + repro.stdout
        assert named in repro.stderr + repro.stdout
    for path, content in before.items():
        assert (repo / path).read_bytes() == content, path


def test_missing_param_key_is_named(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["quantize"]["margin"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = call_stage("quantize", repo)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: params.yaml: quantize.margin is missing; set it to a number of at least 0"
    )


def test_offline_without_cache_says_to_set_scikit_learn_data(repo, tmp_path, monkeypatch):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(empty))
    before = (repo / "data/housing.csv").read_bytes()
    proc = call_stage("data", repo)
    if proc.returncode == 0:
        pytest.skip("this machine has network access: the download succeeded")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "SCIKIT_LEARN_DATA" in proc.stderr
    assert (repo / "data/housing.csv").read_bytes() == before


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda text: text[: len(text) // 2], "corrupt or truncated"),
        (lambda text: text.replace('"version": 1', '"version": 7'), "version 7 is not supported"),
        (
            lambda text: text.replace('"AveRooms"', '"Rooms"'),
            "names feature 'Rooms', which data/test.csv does not have",
        ),
    ],
)
def test_evaluate_refuses_a_bad_model_file_with_one_line(repo, damage, message):
    before = (repo / "metrics/quant.json").read_bytes()
    model = repo / "models/quant.json"
    model.write_text(damage(model.read_text()))
    proc = call_stage("evaluate", repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "models/quant.json" in lines[0]
    assert (repo / "metrics/quant.json").read_bytes() == before


def edited(doc, edit):
    edit(doc)
    return doc
