"""The input layer: every format read into the model's column order, one set of messages."""

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cali_reg import rows
from cali_reg.data import FEATURES
from cali_reg.model import TrainingRange
from cali_reg.rows import RowsError, Schema

ROW = [8.3252, 41.0, 6.984127, 1.02381, 322.0, 2.555556, 37.88, -122.23]
ROW2 = [5.6431, 52.0, 5.817352, 1.073059, 558.0, 2.547945, 37.85, -122.25]
X = np.array([ROW, ROW2])
SCHEMA = Schema(FEATURES)
STRICT = Schema(FEATURES, strict_columns=True)
# The model's order is not the data's: columns must be found by name.
PERMUTED = Schema(tuple(FEATURES[i] for i in (1, 0, 2, 3, 4, 5, 7, 6)))
X_PERMUTED = X[:, [1, 0, 2, 3, 4, 5, 7, 6]]


def records(extra=None):
    return [dict(zip(FEATURES, r, strict=True)) | (extra or {}) for r in (ROW, ROW2)]


def csv_text(columns=FEATURES, extra=""):
    head = ",".join(columns) + ("," + extra.split("=")[0] if extra else "")
    lines = [
        ",".join(repr(dict(zip(FEATURES, r, strict=True))[c]) for c in columns) for r in X.tolist()
    ]
    tail = "," + extra.split("=")[1] if extra else ""
    return head + "\n" + "".join(line + tail + "\n" for line in lines)


def read(text, schema=SCHEMA, fmt="auto"):
    chunks = list(rows.read_chunks(io.StringIO(text), schema, fmt))
    return np.vstack([c.X for c in chunks])


# --- columns by name, in the model's order ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        csv_text(),
        csv_text(FEATURES[::-1]),
        "".join(json.dumps(r) + "\n" for r in records()),
        json.dumps(records(), indent=2),
        json.dumps({"dataframe_records": records()}),
        json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": X.tolist()}}),
    ],
)
def test_every_format_puts_the_columns_in_the_models_order(text):
    np.testing.assert_array_equal(read(text), X)
    np.testing.assert_array_equal(read(text, PERMUTED), X_PERMUTED)


def test_one_object_pretty_printed_over_several_lines_is_one_row():
    text = json.dumps(records()[0], indent=4)
    assert text.count("\n") > 3
    np.testing.assert_array_equal(read(text), X[:1])


def test_a_broken_document_over_several_lines_names_line_and_column():
    with pytest.raises(RowsError, match=r"not valid JSON .* at line 3 column"):
        read('{\n "MedInc": 1,\n "HouseAge": ,\n}\n')


# --- extra columns: ignored as MLflow does, refused with --strict-columns --------------------


def test_extra_columns_are_ignored_whatever_they_hold():
    np.testing.assert_array_equal(read(csv_text(extra="note=not a number")), X)
    text = "".join(json.dumps(r) + "\n" for r in records({"note": [1, {}]}))
    np.testing.assert_array_equal(read(text), X)


@pytest.mark.parametrize(
    "text,words",
    [
        (csv_text(extra="MedHouseVal=4.5"), "CSV header: unexpected column 'MedHouseVal'"),
        (json.dumps(records({"x": 1})[0]) + "\n", "row 1 (line 1): unexpected key 'x'"),
        (json.dumps({"dataframe_records": records({"x": 1})}), "row 1: unexpected key 'x'"),
    ],
)
def test_strict_columns_refuses_extra_columns(text, words):
    with pytest.raises(RowsError, match="--strict-columns") as info:
        read(text, STRICT)
    assert words in str(info.value) and info.value.kind == "columns"


def test_an_id_column_is_not_an_extra_column():
    schema = Schema(FEATURES, "id", True, strict_columns=True)
    chunk = next(rows.read_chunks(io.StringIO(csv_text(extra="id=h1")), schema))
    assert chunk.ids == ["h1", "h1"]


@pytest.mark.parametrize(
    "names,words",
    [
        ([*FEATURES[:7]], "column Longitude is missing; the model's columns are MedInc"),
        ([*FEATURES, "MedInc"], "column 'MedInc' appears more than once"),
        ([*FEATURES[:7], 3], "3 is not a column name"),
    ],
)
def test_one_set_of_column_messages(names, words):
    with pytest.raises(RowsError, match=words):
        SCHEMA.order(names, "X")


def test_messages_name_the_models_own_features():
    schema = Schema(("rooms", "age"))
    with pytest.raises(
        RowsError, match="column age is missing; the model's columns are rooms, age"
    ):
        read("rooms,MedInc\n1,2\n", schema)


# --- V2 tensors --------------------------------------------------------------------------


def tensor(name, shape, data, datatype="FP64"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def per_feature(columns=FEATURES, shape=None, datatype="FP64", x=X):
    return [
        tensor(f, shape or [len(x)], x[:, FEATURES.index(f)].tolist(), datatype) for f in columns
    ]


@pytest.mark.parametrize(
    "inputs",
    [
        [tensor("input-0", [2, 8], X.tolist())],
        [tensor("input-0", [2, 8], X.ravel().tolist())],
        per_feature(),
        per_feature(FEATURES[::-1]),
        per_feature(shape=[2, 1]),
    ],
)
def test_v2_tensors_give_the_rows(inputs):
    np.testing.assert_array_equal(rows.v2_rows(inputs, SCHEMA), X)


def test_v2_per_feature_tensors_are_matched_by_name():
    np.testing.assert_array_equal(rows.v2_rows(per_feature(), PERMUTED), X_PERMUTED)


def test_v2_fp32_is_read_as_float32():
    got = rows.v2_rows([tensor("x", [2, 8], X.tolist(), "FP32")], SCHEMA)
    np.testing.assert_array_equal(got, X.astype(np.float32).astype(np.float64))


def test_v2_integer_per_feature_tensors():
    x = np.round(X)
    got = rows.v2_rows(per_feature(datatype="INT64", x=x), SCHEMA)
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize(
    "inputs,words",
    [
        ([tensor("x", [2, 7], X[:, :7].tolist())], "has 7 columns, the model has 8 features"),
        ([tensor("x", [2, 8], X.ravel().tolist()[:15])], "data holds 15 values, shape [2, 8]"),
        ([tensor("x", [3, 8], X.tolist())], "nested as another shape"),
        ([tensor("x", [2, 8], X.tolist(), "BYTES")], "datatype BYTES; send FP64 or FP32"),
        ([tensor("x", [2, 8], X.tolist(), "INT64")], "datatype INT64; send FP64 or FP32"),
        ([tensor("x", [2, 4, 2], X.tolist())], "shape [2, 4, 2]"),
        (per_feature()[:7], "column Longitude is missing"),
        ([*per_feature()[:7], tensor("Longitude", [3], [1, 2, 3])], "different lengths"),
        ([tensor("x", [1, 8], [[*ROW[:3], "a", *ROW[4:]]])], "row 1, column AveBedrms"),
        ([tensor("x", [1, 8], [[*ROW[:3], True, *ROW[4:]]])], "true is not a number"),
        (per_feature(datatype="INT32"), "is not an integer, as datatype INT32 needs"),
        ([tensor("x", [1, 8], [[*ROW[:4], 1e300, *ROW[5:]]], "FP32")], "does not fit FP32"),
        ([{"name": "x", "shape": [1, 8]}], "inputs[0]: datatype is missing"),
        ([tensor("x", [-1, 8], [])], "non-negative integers"),
        ({"x": 1}, "inputs must be a non-empty list"),
        ([], "inputs must be a non-empty list"),
    ],
)
def test_v2_mistakes_are_one_line(inputs, words):
    with pytest.raises(RowsError) as info:
        rows.v2_rows(inputs, SCHEMA)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_v2_strict_columns_refuses_an_extra_input():
    inputs = [*per_feature(), tensor("extra", [2], [1, 2])]
    np.testing.assert_array_equal(rows.v2_rows(inputs, SCHEMA), X)
    with pytest.raises(RowsError, match="unexpected column 'extra'"):
        rows.v2_rows(inputs, STRICT)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    inputs=st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from([*FEATURES, "x"]) | json_values,
                "shape": st.lists(st.integers(-1, 9), max_size=3) | json_values,
                "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BOOL"]) | json_values,
                "data": st.lists(st.floats() | st.integers() | json_values, max_size=17)
                | json_values,
            }
        ),
        max_size=9,
    )
    | json_values
)
def test_any_v2_inputs_give_rows_or_one_line(inputs):
    try:
        got = rows.v2_rows(inputs, SCHEMA)
    except RowsError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert got.ndim == 2 and got.shape[1] == 8 and np.isfinite(got).all()


# --- the training range ----------------------------------------------------------------------

RANGE = TrainingRange(X.min(axis=0), X.max(axis=0))


def test_rows_outside_the_range_are_counted_by_feature():
    x = np.vstack([X, X[0]])
    x[2, 4] = 1e308
    x[2, 6] = -90.0
    assert rows.outside_range(x, RANGE).sum(axis=0).tolist() == [0, 0, 0, 0, 1, 0, 1, 0]
    rows.check_range(X, FEATURES, RANGE)  # inside: no error


def test_strict_range_names_row_column_and_range():
    x = X.copy()
    x[1, 4] = 1e308
    with pytest.raises(RowsError) as info:
        rows.check_range(x, FEATURES, RANGE, first_row=11)
    assert str(info.value) == (
        "row 12, column Population: 1e+308 is outside the training range [322.0, 558.0] "
        "(--strict-range)"
    )
    assert info.value.kind == "range"


def test_an_id_a_request_may_add_is_then_needed_on_every_row():
    schema = Schema(FEATURES, "id", id_required=False)
    doc = {"dataframe_records": [records()[0] | {"id": "a"}, records()[1] | {"id": 7}]}
    assert rows.mlflow_rows(doc, schema).ids == ["a", "7"]
    assert rows.mlflow_rows({"dataframe_records": records()}, schema).ids is None
    doc["dataframe_records"][1].pop("id")
    with pytest.raises(RowsError, match="row 2: id key 'id' missing"):
        rows.mlflow_rows(doc, schema)


@pytest.mark.parametrize("n", [1, rows.FEW_ROWS, rows.FEW_ROWS + 1, 50])
def test_the_range_check_counts_what_outside_range_counts(n):
    check = rows.RangeCheck(RANGE)
    x = np.resize(X, (n, X.shape[1]))
    assert check.outside(x) is None  # all inside, each path: Python floats or numpy
    # on the limits is inside
    assert check.outside(np.vstack([RANGE.low, RANGE.high])[:n]) is None
    x[-1, 4] = np.nextafter(RANGE.high[4], np.inf)
    x[0, 6] = np.nextafter(RANGE.low[6], -np.inf)
    want = rows.outside_range(x, RANGE).sum(axis=0)
    assert check.outside(x).tolist() == want.tolist()
    assert want[4] == 1 and want[6] == 1


def test_the_range_check_takes_nan_as_not_outside_as_outside_range_does():
    check = rows.RangeCheck(RANGE)
    x = X[:1].copy()
    x[0, 2] = np.nan
    assert check.outside(x) is None and not rows.outside_range(x, RANGE).any()
    x[0, 3] = 1e308  # a NaN before it does not hide a value outside
    assert check.outside(x).tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
