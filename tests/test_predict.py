"""The predictor: input formats, every kind of bad input, and agreement with the pipeline."""

import csv
import io
import json
import math
import os
import re
import subprocess
import sys

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cali_reg import predict
from cali_reg import rows as input_rows
from cali_reg.data import FEATURES, read_table, read_xy
from cali_reg.errors import UserError
from cali_reg.model import exact_predict, load_model
from cali_reg.quantize import quantize
from cali_reg.rows import Schema
from tests.helpers import call_cli, project_env, sh

HEADER = ",".join(FEATURES)
ROW = "8.3252,41.0,6.98,1.02,322.0,2.55,37.88,-122.23"
GOOD_CSV = f"{HEADER}\n{ROW}\n{ROW}\n"
SCHEMA = Schema(FEATURES)


def predict_cli(repo, *args, stdin=None, check=False) -> subprocess.CompletedProcess:
    """``cali-reg predict ARGS`` in ``repo``, called in this process (``call_cli``): the
    tests below that need a real process (a terminal, a closed pipe, imports, memory, the
    ``python -m`` entry point) start one."""
    proc = call_cli(["predict", *args], repo, stdin=stdin)
    if check and proc.returncode != 0:
        pytest.fail(f"predict {args} exited {proc.returncode}\n{proc.stderr}")
    return proc


def values(stdout: str) -> np.ndarray:
    return np.array([float(v) for v in stdout.split()])


def features_csv(X, columns=FEATURES) -> str:
    """CSV text of ``X`` (columns in FEATURES order) written with the given column order."""
    idx = [FEATURES.index(c) for c in columns]
    return (
        ",".join(columns)
        + "\n"
        + "".join(",".join(map(repr, row)) + "\n" for row in X[:, idx].tolist())
    )


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def good_obj(**changes):
    obj = dict(zip(FEATURES, map(float, ROW.split(",")), strict=True))
    obj.update(changes)
    return obj


# --- parsing, in process ------------------------------------------------------


def test_csv_columns_in_any_order_give_the_same_features():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 8))
    shuffled = list(FEATURES)
    rng.shuffle(shuffled)
    assert shuffled != list(FEATURES)
    got = np.vstack(
        [c.X for c in input_rows.csv_chunks(io.StringIO(features_csv(X, shuffled)), SCHEMA)]
    )
    np.testing.assert_array_equal(got, X)


def test_chunks_are_bounded_and_cover_every_row():
    X = np.arange(10 * 8, dtype=float).reshape(10, 8)
    for chunks, text in [
        (input_rows.csv_chunks, features_csv(X)),
        (input_rows.jsonl_chunks, jsonl(dict(zip(FEATURES, r, strict=True)) for r in X.tolist())),
    ]:
        got = [c.X for c in chunks(io.StringIO(text), SCHEMA, chunk_rows=3)]
        assert [len(c) for c in got] == [3, 3, 3, 1]
        np.testing.assert_array_equal(np.vstack(got), X)


def test_format_is_detected_from_the_first_non_blank_character():
    assert input_rows.detect_format(["\n", '  {"MedInc": 1}\n'])[0] == "jsonl"
    assert input_rows.detect_format(["\n", ' [{"MedInc": 1}]\n'])[0] == "json"
    fmt, lines = input_rows.detect_format(["\n", HEADER + "\n", ROW + "\n"])
    assert fmt == "csv" and list(lines) == ["\n", HEADER + "\n", ROW + "\n"]
    # one object over several lines, and an MLflow envelope on one line: one document
    assert input_rows.detect_format(["{\n", ' "MedInc": 1\n', "}\n"])[0] == "json"
    assert input_rows.detect_format(['{"dataframe_records": []}\n'])[0] == "json"


def test_csv_and_json_lines_and_a_byte_order_mark_read_the_same(built_repo):
    X = read_table(built_repo / "data/sample.csv", FEATURES)[:20]
    as_csv = predict_cli(built_repo, stdin=features_csv(X), check=True).stdout
    as_bom = predict_cli(built_repo, stdin="\ufeff" + features_csv(X), check=True).stdout
    as_json = predict_cli(
        built_repo,
        stdin=jsonl(dict(zip(FEATURES, r, strict=True)) for r in X.tolist()),
        check=True,
    ).stdout
    assert as_csv == as_bom == as_json
    assert len(as_csv.splitlines()) == 20


# --- bad input: exit 2, one line naming row and column -------------------------

BAD_INPUTS = [
    # (id, stdin, words the one error line must contain)
    (
        "csv-missing-column",
        HEADER.replace(",Latitude", "") + "\n1,2,3,4,5,6,7\n",
        ["column Latitude is missing"],
    ),
    ("csv-repeated-column", HEADER + ",MedInc\n" + ROW + ",1\n", ["'MedInc' appears more"]),
    (
        "csv-short-row",
        f"{HEADER}\n{ROW}\n1,2,3,4,5,6,7\n",
        ["row 2 (line 3)", "column Longitude", "value missing"],
    ),
    ("csv-long-row", f"{HEADER}\n{ROW},9\n", ["row 1 (line 2)", "extra value '9'"]),
    (
        "csv-non-numeric",
        f"{HEADER}\n{ROW}\n\n" + ROW.replace("6.98", "abc") + "\n",
        ["row 2 (line 4)", "column AveRooms", "'abc' is not a number"],
    ),
    (
        "csv-empty-cell",
        f"{HEADER}\n" + ROW.replace("41.0", "") + "\n",
        ["row 1 (line 2)", "column HouseAge", "'' is not a number"],
    ),
    (
        "csv-nan",
        f"{HEADER}\n" + ROW.replace("322.0", "nan") + "\n",
        ["row 1 (line 2)", "column Population", "'nan' is not a finite number"],
    ),
    (
        "csv-infinity",
        f"{HEADER}\n{ROW}\n" + ROW.replace("37.88", "-inf") + "\n",
        ["row 2 (line 3)", "column Latitude", "not a finite number"],
    ),
    (
        "csv-overflow",
        f"{HEADER}\n" + ROW.replace("2.55", "1e999") + "\n",
        ["row 1 (line 2)", "column AveOccup", "not a finite number"],
    ),
    ("csv-header-only", HEADER + "\n", ["no data rows"]),
    ("empty", "", ["input is empty"]),
    ("blank-lines-only", "\n  \n\n", ["input is empty"]),
    (
        "jsonl-missing-key",
        jsonl([good_obj(), {k: 1 for k in FEATURES if k != "AveOccup"}]),
        ["row 2 (line 2)", "column AveOccup", "key missing"],
    ),
    (
        "jsonl-string",
        jsonl([good_obj(), good_obj(), good_obj(MedInc="8.3")]),
        ["row 3 (line 3)", "column MedInc", '"8.3" is not a number'],
    ),
    ("jsonl-null", jsonl([good_obj(HouseAge=None)]), ["column HouseAge", "null is not a number"]),
    ("jsonl-bool", jsonl([good_obj(AveRooms=True)]), ["column AveRooms", "true is not a number"]),
    (
        "jsonl-nan",
        jsonl([good_obj()]) + "\n" + jsonl([good_obj(AveBedrms=float("nan"))]),
        ["row 2 (line 3)", "column AveBedrms", "not a finite number"],
    ),
    (
        "jsonl-infinity",
        jsonl([good_obj(Longitude=float("inf"))]),
        ["column Longitude", "not a finite number"],
    ),
    (
        "jsonl-huge-integer",
        jsonl([good_obj(Population=10**400)]),
        ["column Population", "not a finite number"],
    ),
    (
        "jsonl-invalid",
        jsonl([good_obj()]) + '{"MedInc": 1,\n',
        ["row 2 (line 2)", "not valid JSON", "at character 15"],
    ),
    ("jsonl-empty-object", jsonl([good_obj()]) + "{}\n", ["row 2 (line 2)", "column MedInc"]),
    (
        "jsonl-not-object",
        jsonl([good_obj()]) + "[1, 2]\n",
        ["row 2 (line 2)", "expected a JSON object", "got an array"],
    ),
    ("not-utf8", HEADER + "\n" + ROW.replace("41.0", "4\xff") + "\n", ["not UTF-8"]),
]


@pytest.mark.parametrize("text,words", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_naming_row_and_column(built_repo, text, words):
    data = text.encode("latin-1" if "\xff" in text else "utf-8")
    proc = predict_cli(built_repo, stdin=data)
    stderr = proc.stderr
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_a_bad_row_after_good_chunks_still_fails(built_repo, tmp_path):
    lines = [ROW] * (input_rows.CHUNK_ROWS + 5) + [ROW.replace("-122.23", "west")]
    path = tmp_path / "rows.csv"
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    proc = predict_cli(built_repo, str(path))
    n = input_rows.CHUNK_ROWS + 6
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: row {n} (line {n + 1}), column Longitude: 'west' is not a number"
    )


@pytest.mark.parametrize(
    "args,words",
    [
        (["no-such.csv"], "no-such.csv: no such file"),
        (["--model", "tiny"], "--model tiny: no such file"),
        (["--id-column", "MedInc"], "not one of the features"),
        (["--sample", "0"], "'0' is not a positive integer"),
        (["--sample", "101"], "holds the first 100 rows"),
        (["rows.csv", "--sample", "3"], "not both"),
        (["--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_arguments_are_one_line(built_repo, args, words):
    proc = predict_cli(built_repo, *args, stdin=GOOD_CSV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


@pytest.mark.parametrize(
    "model,path", [("quant", "models/quant.json"), ("float", "models/float.json")]
)
def test_missing_model_file_is_one_line(repo, model, path):
    (repo / path).unlink()
    proc = predict_cli(repo, "--model", model, stdin=GOOD_CSV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {path} is missing: run 'dvc repro' to build it"
    assert proc.stdout == ""


def test_corrupt_model_file_is_one_line(repo):
    (repo / "models/quant.json").write_text('{"format": "cali-reg/quantized-linear", "vers')
    proc = predict_cli(repo, stdin=GOOD_CSV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "corrupt or truncated" in proc.stderr


# --- agreement with the pipeline ---------------------------------------------


def test_predictions_equal_the_pipelines_own(built_repo, tmp_path):
    X, _ = read_xy(built_repo / "data/test.csv")
    plotted = np.loadtxt(built_repo / "plots/predictions.csv", delimiter=",", skiprows=1)
    path = tmp_path / "test-features.csv"
    path.write_text(features_csv(X, FEATURES[::-1]))

    quant = values(predict_cli(built_repo, str(path), check=True).stdout)
    model = load_model(built_repo / "models/quant.json")
    np.testing.assert_array_equal(quant, model.predict(X))  # same bits
    # the pipeline stores correctly rounded sums (exact_predict), the same on every CPU;
    # the predictor's BLAS sums agree with them to a few ulps, and rounded as stored they
    # differ at most where a sum sits on a rounding tie of the sixth decimal
    exact = exact_predict(X, model.coef, model.intercept)
    np.testing.assert_allclose(quant, exact, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(np.round(exact, 6), plotted[:, 2])
    np.testing.assert_allclose(np.round(quant, 6), plotted[:, 2], rtol=0, atol=1.0000001e-6)

    floats = values(predict_cli(built_repo, str(path), "--model", "float", check=True).stdout)
    assert len(floats) == len(X)
    float_model = load_model(built_repo / "models/float.json")
    exact = exact_predict(X, float_model.coef, float_model.intercept)
    np.testing.assert_allclose(floats, exact, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(np.round(exact, 6), plotted[:, 1])
    # and within rounding error of scikit-learn's own predict (which goes through BLAS)
    # the pipeline's own output, not an untrusted pickle
    sklearn_pred = joblib.load(built_repo / "models/float.joblib").predict(X)
    np.testing.assert_allclose(floats, sklearn_pred, rtol=1e-13, atol=1e-13)


def test_a_rows_prediction_does_not_depend_on_its_chunk(built_repo):
    X = read_table(built_repo / "data/sample.csv", FEATURES)
    model = load_model(built_repo / "models/quant.json")
    alone = np.concatenate([model.predict(X[i : i + 1]) for i in range(len(X))])
    out = io.StringIO()
    n = predict.predict_stream(model, io.StringIO(features_csv(X)), out, chunk_rows=7)
    assert n == len(X)
    np.testing.assert_array_equal(values(out.getvalue()), alone)


def test_sample_prints_the_first_rows_of_the_test_split(built_repo):
    X, _ = read_xy(built_repo / "data/test.csv")
    sample = read_table(built_repo / "data/sample.csv", FEATURES)
    np.testing.assert_array_equal(sample, X[: len(sample)])
    line = predict_cli(built_repo, "--sample", "5", check=True).stdout
    m = re.fullmatch(r"Sample predictions: \[(.*)\]\n", line)
    assert m
    shown = np.array([float(v) for v in m.group(1).split(", ")])
    model = load_model(built_repo / "models/quant.json")
    np.testing.assert_array_equal(shown, model.predict(X[:5]))


def test_sample_if_no_input_prints_the_sample_unless_rows_are_piped(built_repo):
    alone = predict_cli(built_repo, "--sample-if-no-input", "3", check=True).stdout  # /dev/null
    assert alone == predict_cli(built_repo, "--sample", "3", check=True).stdout
    piped = predict_cli(built_repo, "--sample-if-no-input", "3", stdin=GOOD_CSV, check=True)
    assert len(piped.stdout.splitlines()) == 2 and "Sample" not in piped.stdout


def test_a_terminal_on_stdin_is_not_waited_on(built_repo):
    import pty

    controller, terminal = pty.openpty()
    try:
        run = [sys.executable, "-m", "cali_reg", "predict"]
        proc = subprocess.run(
            run,
            cwd=built_repo,
            env=project_env(),
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: no input:") and "--sample N" in proc.stderr
        sample = subprocess.run(
            [*run, "--sample-if-no-input", "2"],
            cwd=built_repo,
            env=project_env(),
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sample.stdout.startswith("Sample predictions: [")
    finally:
        os.close(controller)
        os.close(terminal)


def test_file_stdin_and_dash_give_the_same_output(built_repo, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(GOOD_CSV)
    from_file = predict_cli(built_repo, str(path), check=True).stdout
    assert from_file == predict_cli(built_repo, stdin=GOOD_CSV, check=True).stdout
    assert from_file == predict_cli(built_repo, "-", stdin=GOOD_CSV, check=True).stdout
    assert len(from_file.splitlines()) == 2


# --- what the served path loads, streaming, pipes -----------------------------


@pytest.mark.parametrize("model", ["quant", "float"])
def test_both_models_import_numpy_only(built_repo, model):
    proc = sh(
        [sys.executable, "-X", "importtime", "-m", "cali_reg", "predict", "--model", model],
        built_repo,
        input=GOOD_CSV,
    )
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "numpy" in imported and "cali_reg" in imported
    assert not imported & {"sklearn", "scipy", "joblib", "yaml", "dvc", "pandas"}


def _peak_rss_kib(repo, path) -> int:
    """Peak RSS of one predictor run on ``path``, measured by a parent that does nothing else."""
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run([sys.executable, '-m', 'cali_reg', 'predict', sys.argv[1]], check=True, "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    return int(sh([sys.executable, "-c", code, str(path)], repo).stdout)


def test_memory_does_not_grow_with_the_number_of_rows(built_repo, tmp_path):
    X = read_table(built_repo / "data/sample.csv", FEATURES)
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    small.write_text(features_csv(np.tile(X, (200, 1))))  # 20,000 rows: a few full chunks
    large.write_text(features_csv(np.tile(X, (2000, 1))))  # 200,000 rows, ~17 MB
    # Holding the extra 180,000 rows as float64 alone would take 11 MB; as text, far more.
    growth = _peak_rss_kib(built_repo, large) - _peak_rss_kib(built_repo, small)
    assert growth < 4 * 1024, f"peak RSS grew by {growth} KiB"


def test_a_closed_pipe_ends_the_run_quietly(built_repo, tmp_path):
    path = tmp_path / "many.csv"
    path.write_text(HEADER + "\n" + (ROW + "\n") * 50_000)  # ~1 MB of output: fills the pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "cali_reg", "predict", str(path)],
        cwd=built_repo,
        env=project_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert float(first) > 0 and stderr == ""


# --- fuzzing (hypothesis) -----------------------------------------------------
# Random rows, some of them bad, go through the same parsing and prediction as the
# CLI (predict_stream, with small chunks so that chunk boundaries fall anywhere).
# The oracle says, independently of the parser, which rows are bad: a bad input
# must raise UserError with a one-line message, and the output must hold exactly
# the predictions of some whole chunks before the first bad row, never one for it.

FUZZ_MODEL = quantize(
    np.linspace(-1, 1, 8), 0.5, scheme="window", bits=8, half_width=0.05, feature_names=FEATURES
)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
NO_NEWLINE = st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))


def run_stream(data, fmt, chunk_rows):
    """(printed lines, the UserError or None) for ``data`` read as the CLI reads stdin."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    stream = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline="")
    out = io.StringIO()
    try:
        predict.predict_stream(FUZZ_MODEL, stream, out, fmt, chunk_rows)
    except UserError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
        return out.getvalue().splitlines(), err
    return out.getvalue().splitlines(), None


def prediction(row):
    """The model's prediction for one parsed row; None if it overflows (a bad row too)."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = float(FUZZ_MODEL.predict(np.array([row]))[0])
    return y if math.isfinite(y) else None


def check_output(lines, err, rows, first_bad, chunk_rows):
    """``rows``: the parsed float rows before ``first_bad`` (None if every row is good)."""
    expected = predict.format_values([prediction(row) for row in rows])
    if first_bad is None:
        assert err is None
        assert lines == expected
    else:
        assert err is not None, "a bad row was accepted"
        assert len(lines) <= first_bad and len(lines) % chunk_rows == 0
        assert lines == expected[: len(lines)]


def check_named_row(err, rows, first_bad, chunk_rows):
    """The error names the first bad row; if that row only overflows (it parses), a row of
    the same chunk that does not parse may be named instead, as parsing comes first."""
    named = re.search(r"\brow (\d+)\b", str(err))
    assert named, str(err)
    named = int(named.group(1)) - 1
    if rows[first_bad] is not None:  # parses, but its prediction overflows
        assert first_bad <= named < (first_bad // chunk_rows + 1) * chunk_rows, str(err)
    else:
        assert named == first_bad, str(err)


def csv_value(cell: str):
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


csv_cell = st.one_of(
    FINITE.map(repr),
    FINITE.map(repr),
    st.text(max_size=6),
    st.sampled_from(["nan", "-inf", "1e999", "", " ", "1,5", "0x1p3", "1_0"]),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(csv_cell, min_size=7, max_size=9), min_size=1, max_size=10),
    chunk_rows=st.integers(1, 4),
)
def test_fuzzed_csv_rows_are_predicted_or_refused_in_one_line(rows, chunk_rows):
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([FEATURES, *rows])
    parsed = [[csv_value(c) for c in row] for row in rows]
    parsed = [None if len(row) != 8 or None in row else row for row in parsed]
    first_bad = next(
        (i for i, row in enumerate(parsed) if row is None or prediction(row) is None), None
    )
    lines, err = run_stream(text.getvalue(), "csv", chunk_rows)
    check_output(lines, err, parsed[:first_bad], first_bad, chunk_rows)
    if first_bad is not None:
        check_named_row(err, parsed, first_bad, chunk_rows)


json_value = st.one_of(
    FINITE,
    FINITE,
    st.integers(-(10**400), 10**400),
    st.sampled_from([float("nan"), float("inf"), True, None, "1.5", [1.0]]),
)


@st.composite
def json_line(draw):
    """A line of JSON lines input and its parsed row (None if the row is bad)."""
    kind = draw(st.sampled_from(["good", "good", "values", "keys", "text"]))
    if kind == "text":
        line = draw(st.text(NO_NEWLINE, min_size=1, max_size=30).filter(str.strip))
    else:
        keys = list(FEATURES)
        if kind == "keys":
            keys = draw(
                st.lists(
                    st.sampled_from((*FEATURES, "Extra", "medinc")),
                    min_size=7,
                    max_size=9,
                    unique=True,
                )
            )
        values_ = FINITE if kind == "good" else json_value
        line = json.dumps({k: draw(values_) for k in keys})
    return line, json_row_oracle(line)


def json_row_oracle(line: str):
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not set(FEATURES) <= set(obj):
        return None  # a key the model does not use is ignored
    row = []
    for feature in FEATURES:
        value = obj[feature]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        try:
            value = float(value)
        except OverflowError:
            return None
        if not math.isfinite(value):
            return None
        row.append(value)
    return row


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(json_line(), min_size=1, max_size=10), chunk_rows=st.integers(1, 4))
def test_fuzzed_json_lines_are_predicted_or_refused_in_one_line(lines, chunk_rows):
    parsed = [row for _, row in lines]
    first_bad = next(
        (i for i, row in enumerate(parsed) if row is None or prediction(row) is None), None
    )
    text = "".join(line + "\n" for line, _ in lines)
    out, err = run_stream(text, "jsonl", chunk_rows)
    check_output(out, err, parsed[:first_bad], first_bad, chunk_rows)
    if first_bad is not None:
        check_named_row(err, parsed, first_bad, chunk_rows)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.text(max_size=200).map(lambda t: HEADER + "\n" + t),
        st.text(max_size=200).map(lambda t: GOOD_CSV + t),
    ),
    chunk_rows=st.integers(1, 4),
)
def test_any_input_is_predicted_or_refused_in_one_line(data, chunk_rows):
    lines, _err = run_stream(data, "auto", chunk_rows)  # any other exception fails the test
    for line in lines:
        assert math.isfinite(float(line))


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.lists(csv_cell, min_size=8, max_size=8).filter(
        lambda r: None in [csv_value(c) for c in r]
    )
)
def test_cli_refuses_a_fuzzed_bad_row_with_one_line(built_repo, row):
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([FEATURES, ROW.split(","), row])
    proc = predict_cli(built_repo, stdin=text.getvalue())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: row 2 ")
    assert len(proc.stdout.splitlines()) <= 1  # the good first row at most, never the bad one


# --- the model by path, from anywhere; JSON arrays; ids passing through -------------


def test_predict_works_from_any_directory_with_a_model_path(built_repo, tmp_path):
    rows = (built_repo / "data/sample.csv").read_text()
    inside = predict_cli(built_repo, stdin=rows, check=True).stdout
    elsewhere = sh(
        [
            sys.executable,
            "-m",
            "cali_reg",
            "predict",
            "--model",
            str(built_repo / "models/quant.json"),
        ],
        tmp_path,
        input=rows,
    ).stdout
    assert elsewhere == inside and len(inside.splitlines()) == 100
    floats = sh(
        [
            sys.executable,
            "-m",
            "cali_reg",
            "predict",
            "--model",
            str(built_repo / "models/float.json"),
        ],
        tmp_path,
        input=rows,
    ).stdout
    assert floats == predict_cli(built_repo, "--model", "float", stdin=rows, check=True).stdout


def test_outside_the_project_the_default_model_is_one_line_naming_the_fix(tmp_path):
    proc = sh([sys.executable, "-m", "cali_reg", "predict"], tmp_path, input=GOOD_CSV, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "give --model PATH" in proc.stderr


def test_a_json_array_of_objects_is_read_as_rows(built_repo):
    X = read_table(built_repo / "data/sample.csv", FEATURES)[:5]
    objects = [dict(zip(FEATURES, r, strict=True)) for r in X.tolist()]
    as_array = predict_cli(built_repo, stdin=json.dumps(objects, indent=1), check=True).stdout
    assert as_array == predict_cli(built_repo, stdin=jsonl(objects), check=True).stdout
    assert len(as_array.splitlines()) == 5
    bad = predict_cli(built_repo, stdin=json.dumps([objects[0], {**objects[1], "AveRooms": "x"}]))
    assert bad.returncode == 2
    assert bad.stderr == 'error: row 2, column AveRooms: "x" is not a number\n'
    for text, words in [
        ("[]", "input is empty"),
        ("[1, 2]", "row 1: expected a JSON object"),
        ("[{", "not valid JSON"),
    ]:
        proc = predict_cli(built_repo, stdin=text)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_an_id_column_passes_through_in_every_format(built_repo):
    X = read_table(built_repo / "data/sample.csv", FEATURES)[:3]
    plain = predict_cli(built_repo, stdin=features_csv(X), check=True).stdout.split()
    ids = ["a,1", "b", "7"]  # a comma, quoted in CSV both ways
    header = "id," + ",".join(FEATURES)
    with_ids = (
        header
        + "\n"
        + "".join(
            f'"{i}",' + ",".join(map(repr, row)) + "\n"
            for i, row in zip(ids, X.tolist(), strict=True)
        )
    )
    expected = "id,prediction\n" + "".join(
        f'"{i}",{p}\n' if "," in i else f"{i},{p}\n" for i, p in zip(ids, plain, strict=True)
    )
    assert (
        predict_cli(built_repo, "--id-column", "id", stdin=with_ids, check=True).stdout == expected
    )
    objects = [
        {"id": i, **dict(zip(FEATURES, r, strict=True))}
        for i, r in zip(ids, X.tolist(), strict=True)
    ]
    for text in (jsonl(objects), json.dumps(objects)):
        got = predict_cli(built_repo, "--id-column", "id", stdin=text, check=True).stdout
        assert got == expected
    features = dict(zip(FEATURES, X[0].tolist(), strict=True))
    numeric = predict_cli(built_repo, "--id-column", "n", stdin=jsonl([{"n": 12, **features}]))
    assert numeric.stdout == f"n,prediction\n12,{plain[0]}\n"
    missing = predict_cli(built_repo, "--id-column", "id", stdin=features_csv(X))
    assert missing.returncode == 2 and "id column id is missing" in missing.stderr
    nested = predict_cli(built_repo, "--id-column", "id", stdin=jsonl([{**objects[0], "id": [1]}]))
    assert nested.returncode == 2 and "must be a string or a number" in nested.stderr


def test_the_command_lists_its_subcommands_and_refuses_none(built_repo):
    assert "predict" in sh([sys.executable, "-m", "cali_reg", "--help"], built_repo).stdout
    proc = sh([sys.executable, "-m", "cali_reg"], built_repo, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: give a command: predict")


# --- the model's schema, extra columns, the training range ---------------------------------


def permuted_copy(path, out):
    """The model at ``path`` with its first two features (and coefficients, ranges) swapped."""
    doc = json.loads(path.read_text())
    for values in (doc["feature_names"], doc["coef"], *doc["training_range"].values()):
        values[0], values[1] = values[1], values[0]
    out.write_text(json.dumps(doc, indent=2))
    return out


def test_a_model_file_with_features_permuted_predicts_what_the_original_does(built_repo, tmp_path):
    permuted = permuted_copy(built_repo / "models/float.json", tmp_path / "permuted.json")
    rows_csv = (built_repo / "data/sample.csv").read_text()
    original = predict_cli(built_repo, "--model", "float", stdin=rows_csv, check=True).stdout
    swapped = predict_cli(built_repo, "--model", str(permuted), stdin=rows_csv, check=True).stdout
    assert len(original.splitlines()) == 100
    # the same sums in another order: equal but for the last bits of float addition
    np.testing.assert_allclose(values(swapped), values(original), rtol=1e-13, atol=1e-13)
    sample = predict_cli(built_repo, "--model", str(permuted), "--sample", "3", check=True)
    assert sample.stdout.startswith("Sample predictions: [0.719")


def test_extra_columns_are_ignored_unless_strict_columns(built_repo):
    text = HEADER + ",MedHouseVal\n" + ROW + ",4.5\n"
    plain = predict_cli(built_repo, stdin=GOOD_CSV, check=True).stdout.splitlines()[0]
    assert predict_cli(built_repo, stdin=text, check=True).stdout == plain + "\n"
    proc = predict_cli(built_repo, "--strict-columns", stdin=text)
    assert proc.returncode == 2 and proc.stderr == (
        "error: CSV header: unexpected column 'MedHouseVal'; with --strict-columns the "
        f"columns must be exactly {', '.join(FEATURES)} (any order)\n"
    )


def test_strict_range_refuses_a_row_outside_the_training_range(built_repo):
    far = good_obj(Population=1e308)
    text = jsonl([good_obj(), far])
    loose = predict_cli(built_repo, stdin=text, check=True).stdout.splitlines()
    assert len(loose) == 2  # predicted, however absurd
    proc = predict_cli(built_repo, "--strict-range", stdin=text)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "error: row 2, column Population: 1e+308 is outside the training range "
        "[3.0, 35682.0] (--strict-range)\n"
    )


def test_a_json_object_over_several_lines_and_an_mlflow_envelope_are_read(built_repo):
    one = predict_cli(built_repo, stdin=jsonl([good_obj()]), check=True).stdout
    pretty = predict_cli(built_repo, stdin=json.dumps(good_obj(), indent=4), check=True).stdout
    assert pretty == one
    split = {"dataframe_split": {"columns": list(FEATURES), "data": [ROW.split(",")]}}
    split["dataframe_split"]["data"] = [[float(v) for v in ROW.split(",")]]
    for doc in (split, {"dataframe_records": [good_obj()]}):
        for text in (json.dumps(doc), json.dumps(doc, indent=2)):
            assert predict_cli(built_repo, stdin=text, check=True).stdout == one


def test_a_file_that_is_not_a_model_says_so(built_repo):
    proc = predict_cli(built_repo, "--model", "data/sample.csv", stdin=GOOD_CSV)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "data/sample.csv is not a model file" in proc.stderr
    assert "dvc repro" not in proc.stderr
