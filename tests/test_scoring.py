"""The core of serving, in process: a body and a model in, an answer or a client error out."""

import hashlib
import io
import json

import numpy as np
import orjson
import pytest

from cali_reg import predict as predict_command
from cali_reg import scoring
from cali_reg.data import FEATURES
from cali_reg.model import FloatModel, TrainingRange, dumps
from cali_reg.quantize import quantize
from cali_reg.scoring import ClientError

ROW = [8.3252, 41.0, 6.984127, 1.02381, 322.0, 2.555556, 37.88, -122.23]
ROW2 = [5.6431, 52.0, 5.817352, 1.073059, 558.0, 2.547945, 37.85, -122.25]
X = np.array([ROW, ROW2])
COEF = np.array([0.45, 0.0097, -0.12, 0.78, -2e-06, -0.0035, -0.42, -0.43])
RANGE = TrainingRange(
    np.array([0.5, 1, 0.8, 0.3, 3, 0.7, 32.5, -124.4]),
    np.array([15, 52, 142, 26, 35682, 1244, 42, -114.3]),
)
SWAP = [1, 0, 2, 3, 4, 5, 7, 6]  # HouseAge first, Longitude before Latitude


def write(tmp_path, model, name):
    path = tmp_path / name
    path.write_text(dumps(model))
    return path


@pytest.fixture
def models(tmp_path):
    """The float model, the same model with its features in another order, a quantised one."""
    original = FloatModel(FEATURES, COEF, -37.0, RANGE)
    permuted = FloatModel(
        tuple(FEATURES[i] for i in SWAP),
        COEF[SWAP],
        -37.0,
        TrainingRange(RANGE.low[SWAP], RANGE.high[SWAP]),
    )
    quant = quantize(COEF, -37.0, scheme="window", bits=8, margin=0.05, feature_names=FEATURES)
    quant.training_range = RANGE
    return {
        "float": scoring.load_served(write(tmp_path, original, "float.json")),
        "permuted": scoring.load_served(write(tmp_path, permuted, "permuted.json")),
        "quant": scoring.load_served(write(tmp_path, quant, "quant.json")),
    }


def records():
    return [dict(zip(FEATURES, r, strict=True)) for r in (ROW, ROW2)]


def mlflow(served, doc, ctype="application/json"):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return orjson.loads(scoring.invocations(body, ctype, served).body)


def v2(served, doc):
    return orjson.loads(scoring.v2_infer(json.dumps(doc).encode(), served).body)


def bits(values):
    return np.asarray(values, dtype=np.float64).view(np.uint64)


def cli_values(served, text):
    out = io.StringIO()
    predict_command.predict_stream(served.model, io.StringIO(text), out)
    return bits([float(v) for v in out.getvalue().split()])


CSV = ",".join(FEATURES) + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in (ROW, ROW2))
SPLIT = {"dataframe_split": {"columns": list(FEATURES), "data": [ROW, ROW2]}}
V2_MATRIX = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP64", "data": [ROW, ROW2]}]}


@pytest.mark.parametrize("name", ["float", "quant"])
def test_both_protocols_answer_the_bits_of_cali_reg_predict(models, name):
    served = models[name]
    want = cli_values(served, CSV)
    for doc in (SPLIT, {"dataframe_records": records()}, {"instances": records()}):
        assert np.array_equal(bits(mlflow(served, doc)["predictions"]), want)
    assert np.array_equal(bits(mlflow(served, CSV.encode(), "text/csv")["predictions"]), want)
    out = v2(served, V2_MATRIX)["outputs"]
    assert out[0]["name"] == "predict" and out[0]["datatype"] == "FP64"
    assert out[0]["shape"] == [2] and np.array_equal(bits(out[0]["data"]), want)


def test_a_model_with_its_features_listed_in_another_order_answers_the_same(models):
    original, permuted = models["float"], models["permuted"]
    assert permuted.features != original.features

    # the same sums in another order: equal but for the last bits of float addition
    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)

    for doc in (SPLIT, {"dataframe_records": records()}):
        close(mlflow(permuted, doc)["predictions"], mlflow(original, doc)["predictions"])
    close(cli_values(permuted, CSV).view(np.float64), cli_values(original, CSV).view(np.float64))
    # V2: one tensor per feature, by name; the [N, F] tensor in the model's (metadata's) order
    per_feature = {
        "inputs": [
            {"name": f, "shape": [2], "datatype": "FP64", "data": X[:, i].tolist()}
            for i, f in enumerate(FEATURES)
        ]
    }
    close(
        v2(permuted, per_feature)["outputs"][0]["data"],
        v2(original, per_feature)["outputs"][0]["data"],
    )
    in_its_order = {
        "inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP64", "data": X[:, SWAP].tolist()}]
    }
    close(
        v2(permuted, in_its_order)["outputs"][0]["data"],
        v2(original, V2_MATRIX)["outputs"][0]["data"],
    )
    names = [t["name"] for t in orjson.loads(scoring.v2_model_metadata(permuted))["inputs"]]
    assert names == list(permuted.features)


def test_a_model_of_other_features_is_served_as_its_file_says(tmp_path):
    model = FloatModel(("rooms", "age"), np.array([2.0, -0.5]), 1.0)
    path = write(tmp_path, model, "houses.json")
    served = scoring.load_served(path)
    info = orjson.loads(served.info)
    assert info["feature_names"] == ["rooms", "age"] and info["model_name"] == "houses"
    assert info["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    meta = orjson.loads(scoring.v2_model_metadata(served))
    assert meta["name"] == "houses" and meta["versions"] == [served.version]
    assert [t["name"] for t in meta["inputs"]] == ["rooms", "age"]
    assert mlflow(served, {"dataframe_records": [{"age": 2, "rooms": 3}]}) == {"predictions": [6.0]}
    doc = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [3, 2]}]}
    assert v2(served, doc)["outputs"][0]["data"] == [6.0]
    with pytest.raises(ClientError, match="row 1, column age: key missing"):
        mlflow(served, {"dataframe_records": [{"rooms": 3}]})
    with pytest.raises(
        ClientError, match="column age is missing; the model's columns are rooms, age"
    ):
        mlflow(served, {"dataframe_split": {"columns": ["rooms"], "data": [[3]]}})
    with pytest.raises(ClientError, match="the model has 2 features"):
        v2(served, V2_MATRIX)


def test_v2_echoes_id_and_parameters(models):
    doc = {
        **V2_MATRIX,
        "id": "42",
        "parameters": {"a": 1, "b": "x"},
        "outputs": [{"name": "predict"}],
    }
    answer = v2(models["quant"], doc)
    assert answer["id"] == "42" and answer["parameters"] == {"a": 1, "b": "x"}
    assert (
        answer["model_name"] == "quant-model" and answer["model_version"] == models["quant"].version
    )
    assert "id" not in v2(models["quant"], V2_MATRIX)


@pytest.mark.parametrize(
    "doc,words",
    [
        ({**V2_MATRIX, "id": 42}, "id must be a string"),
        ({**V2_MATRIX, "parameters": {"a": [1]}}, "parameters must be an object"),
        ({**V2_MATRIX, "outputs": [{"name": "other"}]}, "unknown output 'other'"),
        ({**V2_MATRIX, "extra": 1}, "unexpected key 'extra'"),
        ({"id": "1"}, "inputs is missing"),
        ([1], "expected an inference request object"),
    ],
)
def test_v2_request_mistakes_are_400(models, doc, words):
    with pytest.raises(ClientError) as info:
        v2(models["quant"], doc)
    assert info.value.status == 400 and words in info.value.message


def test_rows_outside_the_training_range_are_counted_or_refused(tmp_path, models):
    far = [*ROW[:4], 1e308, *ROW[5:]]
    answer = scoring.invocations(
        json.dumps({"dataframe_records": [dict(zip(FEATURES, far, strict=True))]}).encode(),
        "application/json",
        models["float"],
    )
    assert answer.rows == 1 and answer.outside.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    strict = scoring.load_served(tmp_path / "float.json", strict_range=True)
    with pytest.raises(ClientError) as info:
        mlflow(strict, {"dataframe_split": {"columns": list(FEATURES), "data": [ROW, far]}})
    assert info.value.status == 400 and info.value.kind == "range"
    assert info.value.message == (
        "row 2, column Population: 1e+308 is outside the training range [3.0, 35682.0] "
        "(--strict-range)"
    )


def test_strict_range_needs_a_model_that_records_its_range(tmp_path):
    path = write(tmp_path, FloatModel(FEATURES, COEF, -37.0), "old.json")
    with pytest.raises(Exception, match="records no training range"):
        scoring.load_served(path, strict_range=True)


def test_strict_columns(tmp_path, models):
    doc = {"dataframe_records": [dict(zip(FEATURES, ROW, strict=True)) | {"x": 1}]}
    assert len(mlflow(models["float"], doc)["predictions"]) == 1
    strict = scoring.load_served(tmp_path / "float.json", strict_columns=True)
    with pytest.raises(ClientError, match="unexpected key 'x'"):
        mlflow(strict, doc)


@pytest.mark.parametrize(
    "ctype,status", [("text/plain", 415), (None, 415), ("text/csv; charset=latin-1", 415)]
)
def test_invocations_media_types(models, ctype, status):
    with pytest.raises(ClientError) as info:
        scoring.invocations(CSV.encode(), ctype, models["float"])
    assert info.value.status == status and info.value.kind == "media_type"


@pytest.mark.parametrize(
    "path,route",
    [
        ("/v2/models/m", ("m", None, "")),
        ("/v2/models/m/ready", ("m", None, "ready")),
        ("/v2/models/m/versions/abc/infer", ("m", "abc", "infer")),
        ("/v2/models/m/versions/abc", ("m", "abc", "")),
        ("/v2/models/", None),
        ("/v2/models/m/other", None),
        ("/v2/models/m/versions//infer", None),
    ],
)
def test_v2_routes(path, route):
    assert scoring.v2_route(path) == route


def test_a_wrong_model_name_or_version_is_404(models):
    served = models["quant"]
    scoring.check_model(served, "quant-model", served.version)
    for name, version in [("float-model", None), ("quant-model", "0" * 64)]:
        with pytest.raises(ClientError) as info:
            scoring.check_model(served, name, version)
        assert info.value.status == 404
