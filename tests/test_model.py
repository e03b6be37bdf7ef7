"""The model file's schema: feature names matched by name, refused when malformed, the range."""

import json

import numpy as np
import pytest

from cali_reg import model as mdl
from cali_reg.data import FEATURES
from cali_reg.errors import ModelFileError
from cali_reg.quantize import quantize

COEF = np.array([0.45, 0.0097, -0.12, 0.78, -2e-06, -0.0035, -0.42, -0.43])
RANGE = mdl.TrainingRange(np.arange(8.0), np.arange(8.0) + 10)
ROWS = np.random.default_rng(0).uniform(0, 10, size=(5, 8))


def float_doc() -> dict:
    return mdl.FloatModel(FEATURES, COEF, -37.0, RANGE).to_dict()


def saved(tmp_path, doc, name="m.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def swapped(doc: dict, i: int = 0, j: int = 1) -> dict:
    """The same model with features i and j listed the other way round."""
    doc = json.loads(json.dumps(doc))
    for values in (doc["feature_names"], doc.get("coef"), *doc["training_range"].values()):
        if values is not None:
            values[i], values[j] = values[j], values[i]
    return doc


def test_a_float_file_round_trips_with_its_training_range(tmp_path):
    back = mdl.load_model(saved(tmp_path, float_doc()))
    assert back.feature_names == FEATURES
    np.testing.assert_array_equal(back.training_range.low, RANGE.low)
    np.testing.assert_array_equal(back.training_range.high, RANGE.high)
    assert mdl.dumps(back) == mdl.dumps(mdl.FloatModel(FEATURES, COEF, -37.0, RANGE))


def test_a_file_without_training_range_still_loads(tmp_path):
    doc = float_doc()
    del doc["training_range"]
    assert mdl.load_model(saved(tmp_path, doc)).training_range is None


def test_a_quantised_file_keeps_the_training_range(tmp_path):
    q = quantize(COEF, -37.0, scheme="window", bits=8, margin=0.05, feature_names=FEATURES)
    q.training_range = RANGE
    back = mdl.load_model(saved(tmp_path, q.to_dict()))
    np.testing.assert_array_equal(back.training_range.high, RANGE.high)
    np.testing.assert_array_equal(back.predict(ROWS), q.predict(ROWS))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["feature_names"].__setitem__(1, "MedInc"), "'MedInc' appears twice"),
        (lambda d: d["feature_names"].__setitem__(2, " "), r"feature_names\[2\] is empty"),
        (lambda d: d["feature_names"].pop(), "holds 7 names for 8 coefficients"),
        (lambda d: d["coef"].append(1.0), "holds 8 names for 9 coefficients"),
        (lambda d: d.update(feature_names="MedInc"), "non-empty list of strings"),
        (lambda d: d["training_range"]["min"].pop(), "training_range must be"),
        (lambda d: d["training_range"].update(min=[99.0] * 8), "min is above its max"),
    ],
)
def test_a_malformed_schema_is_refused_at_load_in_one_line(tmp_path, edit, message):
    doc = float_doc()
    edit(doc)
    path = saved(tmp_path, doc)
    with pytest.raises(ModelFileError, match=message) as info:
        mdl.load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_repeated_name_in_a_quantised_file_is_refused(tmp_path):
    q = quantize(COEF, -37.0, scheme="window", bits=8, margin=0.05, feature_names=FEATURES)
    doc = q.to_dict()
    doc["feature_names"][7] = "Latitude"
    with pytest.raises(ModelFileError, match="'Latitude' appears twice"):
        mdl.load_model(saved(tmp_path, doc))


@pytest.mark.parametrize(
    "content", [b"MedInc,HouseAge\n1,2\n", b"\x89PNG\r\n\x1a\n", b"", b"[1, 2]"]
)
def test_a_file_that_is_not_a_model_says_so(tmp_path, content):
    path = tmp_path / "rows.csv"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="is not a model file") as info:
        mdl.load_model(path)
    assert "dvc repro" not in str(info.value)


def test_a_json_object_of_another_kind_is_not_a_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="not a model file"):
        mdl.load_model(saved(tmp_path, {"dataframe_records": []}))


def test_training_range_of_is_the_columns_min_and_max():
    got = mdl.training_range_of(ROWS)
    np.testing.assert_array_equal(got.low, ROWS.min(axis=0))
    np.testing.assert_array_equal(got.high, ROWS.max(axis=0))
