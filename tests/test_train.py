"""Fitting and saving the float model: the estimator and its weights as JSON."""

import json

import joblib
import numpy as np
import pytest

from cali_reg import train
from cali_reg.data import FEATURES
from cali_reg.model import FloatModel, load_model


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(FEATURES))) * rng.uniform(0.1, 100, len(FEATURES))
    y = X @ rng.normal(size=len(FEATURES)) + 3.0 + rng.normal(size=200)
    estimator = train.fit(X, y)
    paths = tmp_path / "float.joblib", tmp_path / "float.json"
    train.save(estimator, *paths)
    return estimator, X, *paths


def test_weights_file_is_the_estimator_bit_for_bit(saved):
    estimator, X, joblib_path, weights_path = saved
    model = load_model(weights_path, expect=FloatModel)
    np.testing.assert_array_equal(model.coef, estimator.coef_)
    assert model.intercept == estimator.intercept_
    assert model.feature_names == FEATURES
    np.testing.assert_allclose(model.predict(X), estimator.predict(X), rtol=1e-13)
    np.testing.assert_array_equal(joblib.load(joblib_path).coef_, estimator.coef_)


def test_fit_is_rounded_to_significant_digits(saved):
    estimator = saved[0]
    for value in [*estimator.coef_, estimator.intercept_]:
        assert float(f"{value:.{train.SIGNIFICANT_DIGITS}g}") == value


def test_the_json_twin_is_plain_json(saved):
    doc = json.loads(saved[3].read_text())
    assert doc["feature_names"] == list(FEATURES)
    assert (doc["coef"], doc["intercept"]) == (saved[0].coef_.tolist(), saved[0].intercept_)
