"""The metrics, against scikit-learn's definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cali_reg import evaluate


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5000), noise=st.floats(1e-3, 1e3))
def test_scores_are_scikit_learns(seed, n, noise):
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    rng = np.random.default_rng(seed)
    y = rng.normal(2.0, 1.0, n)
    pred = y + rng.normal(0, noise, n)
    got = evaluate.scores(y, pred)
    # one unit in the last kept decimal: the two sums may round differently at the boundary
    tol = 1.5 * 10.0**-evaluate.DECIMALS
    assert got["r2"] == pytest.approx(r2_score(y, pred), abs=tol, rel=1e-12)
    assert got["rmse"] == pytest.approx(root_mean_squared_error(y, pred), abs=tol, rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), abs=tol, rel=1e-12)


def test_compare_is_quant_minus_float():
    f = {"r2": 0.5, "rmse": 0.7, "mae": 0.5, "payload_bytes": 72}
    q = {"r2": 0.49, "rmse": 0.71, "mae": 0.52, "payload_bytes": 18}
    c = evaluate.compare(f, q, np.array([1.0, 2.0]), np.array([1.25, 1.5]))
    assert c == {
        "delta_r2": -0.01,
        "delta_rmse": 0.01,
        "delta_mae": 0.02,
        "size_ratio": 0.25,
        "max_abs_pred_diff": 0.5,
    }


def test_the_stage_reads_columns_by_the_models_names(repo):
    """A model file with features permuted, and test data with columns permuted: same metrics."""
    import json
    import sys

    from tests.helpers import sh

    before = {name: (repo / "metrics" / name).read_text() for name in ("float.json", "quant.json")}
    path = repo / "models/float.json"
    doc = json.loads(path.read_text())
    for values in (doc["feature_names"], doc["coef"], *doc["training_range"].values()):
        values[0], values[1], values[6] = values[6], values[0], values[1]
    path.write_text(json.dumps(doc, indent=2))
    test = repo / "data/test.csv"
    lines = [line.split(",") for line in test.read_text().splitlines()]
    test.write_text("".join(",".join(line[::-1]) + "\n" for line in lines))
    sh([sys.executable, "-m", "stages.evaluate"], repo)
    after = {name: (repo / "metrics" / name).read_text() for name in before}
    assert after == before
