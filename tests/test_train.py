"""The train stage's two files: the scikit-learn estimator and its weights as JSON."""
import json

import numpy as np
import pytest

from stages import train
from stages.common import FEATURES, UserError


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(FEATURES))) * rng.uniform(0.1, 100, len(FEATURES))
    y = X @ rng.normal(size=len(FEATURES)) + 3.0 + rng.normal(size=200)
    model = train.fit(X, y)
    paths = tmp_path / "float.joblib", tmp_path / "float.json"
    train.save(model, *map(str, paths))
    return model, X, *paths


def test_weights_file_is_the_estimator_bit_for_bit(saved):
    model, X, joblib_path, weights_path = saved
    coef, intercept = train.load_weights(str(weights_path))
    np.testing.assert_array_equal(coef, model.coef_)
    assert intercept == model.intercept_
    np.testing.assert_array_equal(X @ coef + intercept, model.predict(X))
    np.testing.assert_array_equal(train.load(str(joblib_path)).coef_, model.coef_)


def edited(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["coef"].pop(), "does not hold 8 finite coefficients"),
    (lambda d: d["coef"].__setitem__(2, float("nan")), "does not hold 8 finite coefficients"),
    (lambda d: d["coef"].__setitem__(2, "0.1"), "does not hold 8 finite coefficients"),
    (lambda d: d.update(intercept=True), "and a finite intercept"),
    (lambda d: d.pop("intercept"), "and a finite intercept"),
    (lambda d: d["feature_names"].reverse(), "for MedInc,HouseAge"),
])
def test_tampered_weights_are_refused_with_one_line(saved, edit, message):
    weights_path = saved[3]
    edited(weights_path, edit)
    with pytest.raises(UserError, match=message) as info:
        train.load_weights(str(weights_path))
    assert str(weights_path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_and_missing_weights_are_refused(saved, tmp_path):
    weights_path = saved[3]
    weights_path.write_text(weights_path.read_text()[:30])
    with pytest.raises(UserError, match="corrupt or truncated"):
        train.load_weights(str(weights_path))
    with pytest.raises(UserError, match="is missing: run 'dvc repro'"):
        train.load_weights(str(tmp_path / "nope.json"))
