"""cali-reg serve: real HTTP to a real server (granian) on 127.0.0.1, on a free port."""

import csv
import http.client
import io
import json
import re
import signal
import socket
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cali_reg.data import FEATURES
from cali_reg.model import load_model
from tests.helpers import sh
from tests.helpers.server import STOP_GRACE, Server

pytest.importorskip("granian")
pytest.importorskip("orjson")

ROW = [8.3252, 41.0, 6.984127, 1.02381, 322.0, 2.555556, 37.88, -122.23]
ROW2 = [5.6431, 52.0, 5.817352, 1.073059, 558.0, 2.547945, 37.85, -122.25]


@pytest.fixture(scope="module")
def server(built_repo):
    srv = Server(built_repo)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def id_server(built_repo):
    srv = Server(
        built_repo,
        *("--id-column", "house_id", "--max-body-bytes", "2000", "--timeout", "1"),
        *("--no-metrics", "--access-log", "off"),
    )
    yield srv
    srv.stop()


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.uint64)


@pytest.fixture(scope="module")
def expected(built_repo):
    model = load_model(built_repo / "models" / "quant.json")
    return model.predict(np.array([ROW, ROW2])).tolist()


# --- the payload forms of MLflow's documentation -------------------------------------

SHUFFLED = [FEATURES[i] for i in (3, 0, 7, 1, 6, 2, 5, 4)]


def _records():
    return [dict(zip(FEATURES, row, strict=True)) for row in (ROW, ROW2)]


PAYLOADS = {
    # {"dataframe_split": pandas_df.to_dict(orient="split")}, index included
    "dataframe_split": {
        "dataframe_split": {"index": [0, 1], "columns": list(FEATURES), "data": [ROW, ROW2]}
    },
    "dataframe_split, any column order": {
        "dataframe_split": {
            "columns": SHUFFLED,
            "data": [
                [dict(zip(FEATURES, r, strict=True))[c] for c in SHUFFLED] for r in (ROW, ROW2)
            ],
        }
    },
    # {"dataframe_records": pandas_df.to_dict(orient="records")}
    "dataframe_records": {"dataframe_records": _records()},
    # TF serving's row format, and its column format
    "instances": {"instances": _records()},
    "inputs": {"inputs": {f: [ROW[i], ROW2[i]] for i, f in enumerate(FEATURES)}},
    "params alongside": {"dataframe_records": _records(), "params": {}},
}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_each_json_form_answers_predictions(server, expected, name):
    status, doc = server.post(PAYLOADS[name])
    assert status == 200, doc
    assert list(doc) == ["predictions"]
    assert np.array_equal(bits(doc["predictions"]), bits(expected))


@pytest.mark.parametrize("ctype", ["text/csv", "text/csv; charset=utf-8", "application/csv"])
def test_csv_body(server, expected, ctype):
    body = ",".join(SHUFFLED) + "\n"
    for row in (ROW, ROW2):
        values = dict(zip(FEATURES, row, strict=True))
        body += ",".join(repr(values[c]) for c in SHUFFLED) + "\n"
    status, doc = server.post(body, ctype)
    assert status == 200, doc
    assert np.array_equal(bits(doc["predictions"]), bits(expected))


def test_health_and_version(server, built_repo):
    import hashlib

    for path in ("/ping", "/health"):
        assert server.request("GET", path)[0] == 200
    for path in ("/version", "/metadata"):
        status, _, doc = server.request("GET", path)
        assert status == 200
        model = load_model(built_repo / "models" / "quant.json")
        sha = hashlib.sha256((built_repo / "models" / "quant.json").read_bytes()).hexdigest()
        assert doc["model_sha256"] == sha
        assert doc["feature_names"] == list(FEATURES)
        assert (doc["scheme"], doc["bits"], doc["payload_bytes"]) == (
            model.scheme,
            model.bits,
            model.payload_bytes,
        )


def test_agrees_bit_for_bit_with_predict_on_the_test_split_in_both_protocols(
    server, built_repo, tmp_path
):
    """Every row of data/test.csv, as CSV and as dataframe_split, against `cali-reg predict`."""
    with open(built_repo / "data" / "test.csv", newline="") as f:
        rows = list(csv.reader(f))
    cols = [rows[0].index(name) for name in FEATURES]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([[r[i] for i in cols] for r in rows])
    features_csv = tmp_path / "features.csv"
    features_csv.write_text(text.getvalue())
    out = sh([sys.executable, "-m", "cali_reg", "predict", str(features_csv)], built_repo).stdout
    want = bits([float(line) for line in out.split()])
    assert len(want) == len(rows) - 1 == 4128

    status, doc = server.post(text.getvalue(), "text/csv")
    assert status == 200, doc
    assert np.array_equal(bits(doc["predictions"]), want)
    data = [[float(r[i]) for i in cols] for r in rows[1:]]
    split = {"columns": list(FEATURES), "data": data}
    status, doc = server.post({"dataframe_split": split})
    assert status == 200, doc
    assert np.array_equal(bits(doc["predictions"]), want)
    # the Open Inference Protocol: one [N, 8] FP64 tensor
    tensor = {"name": "x", "shape": [len(data), 8], "datatype": "FP64", "data": data}
    status, doc = server.v2_infer({"inputs": [tensor]})
    assert status == 200, doc
    assert doc["outputs"][0]["shape"] == [len(data)]
    assert np.array_equal(bits(doc["outputs"][0]["data"]), want)


def test_id_column_passes_through(id_server, expected):
    split = {"columns": ["house_id", *FEATURES], "data": [["a", *ROW], [7, *ROW2]]}
    status, doc = id_server.post({"dataframe_split": split})
    assert status == 200, doc
    assert doc["ids"] == ["a", "7"]
    assert np.array_equal(bits(doc["predictions"]), bits(expected))
    records = [{"house_id": "x", **r} for r in _records()]
    assert id_server.post({"dataframe_records": records})[1]["ids"] == ["x", "x"]
    body = "house_id," + ",".join(FEATURES) + "\nh1," + ",".join(map(repr, ROW)) + "\n"
    status, doc = id_server.post(body, "text/csv")
    assert (status, doc["ids"]) == (200, ["h1"])
    # without the column the answer is MLflow's alone
    assert list(id_server.post({"dataframe_records": _records()})[1]) == ["predictions"]


# --- client mistakes ------------------------------------------------------------------

HEADER = ",".join(FEATURES)
NUMS = ",".join(map(repr, ROW))


def split_with(columns, row):
    return json.dumps({"dataframe_split": {"columns": columns, "data": [row]}})


ERRORS = [
    # (content type, body, status, words the message must hold)
    ("application/json", '{"dataframe_split": ', 400, "not valid JSON"),
    ("application/json", b"\xff\xfe{}", 400, "not UTF-8"),
    ("application/json", "[1, 2]", 400, "exactly one of"),
    ("application/json", json.dumps({"dataframe_records": [], "inputs": []}), 400, "exactly one"),
    ("application/json", json.dumps({"columns": list(FEATURES), "data": [ROW]}), 400, "exactly"),
    (
        "application/json",
        split_with(list(FEATURES[:7]), ROW[:7]),
        400,
        "column Longitude is missing",
    ),
    ("application/json", split_with([*FEATURES[:7], "MedInc"], ROW), 400, "more than once"),
    (
        "application/json",
        split_with(list(FEATURES), [*ROW[:4], "abc", *ROW[5:]]),
        400,
        'row 1, column Population: "abc" is not a number',
    ),
    (
        "application/json",
        split_with(list(FEATURES), [*ROW[:4], True, *ROW[5:]]),
        400,
        "row 1, column Population: true is not a number",
    ),
    (
        "application/json",
        split_with(list(FEATURES), ROW).replace("322.0", "NaN"),
        400,
        "row 1, column Population: nan is not a finite number",
    ),
    (
        "application/json",
        split_with(list(FEATURES), ROW).replace("322.0", "1e999"),
        400,
        "row 1, column Population: inf is not a finite number",
    ),
    ("application/json", split_with(list(FEATURES), ROW[:7]), 400, "row 1: 7 values"),
    (
        "application/json",
        json.dumps({"dataframe_records": [dict(zip(FEATURES, ROW, strict=True)), {}]}),
        400,
        "row 2, column MedInc: key missing",
    ),
    ("application/json", json.dumps({"instances": [ROW]}), 400, "row 1: expected a JSON object"),
    ("application/json", json.dumps({"dataframe_records": []}), 400, "no rows"),
    (
        "application/json",
        json.dumps({"dataframe_records": _records(), "params": {"a": 1}}),
        400,
        "no params",
    ),
    ("application/json", "", 400, "the body is empty"),
    ("text/csv", "", 400, "the body is empty"),
    (
        "text/csv",
        HEADER + "\n" + NUMS.replace("322.0", "x") + "\n",
        400,
        "row 1 (line 2), column Population: 'x' is not a number",
    ),
    (
        "text/csv",
        HEADER + "\n" + NUMS.replace("322.0", "inf") + "\n",
        400,
        "column Population: 'inf' is not a finite number",
    ),
    (
        "text/csv",
        HEADER.replace("Latitude", "Lat") + "\n" + NUMS + "\n",
        400,
        "column Latitude is missing",
    ),
    ("text/csv", HEADER + ",MedInc\n" + NUMS + ",1\n", 400, "more than once"),
    (
        "text/csv",
        HEADER + "\n" + NUMS[: NUMS.rindex(",")] + "\n",
        400,
        "column Longitude: value missing",
    ),
    ("text/csv", HEADER + "\n", 400, "no data rows"),
    ("text/csv; charset=latin-1", HEADER + "\n" + NUMS + "\n", 415, "UTF-8"),
    ("text/plain", "x", 415, "application/json"),
    (None, "x", 415, "no Content-Type"),
    (
        "application/json",
        split_with(list(FEATURES), [1.7e308, 1.7e308, 0, 1.7e308, 0, 0, 0, 0]),
        400,
        "row 1: the prediction overflows",
    ),
]


@pytest.mark.parametrize(("ctype", "body", "status", "words"), ERRORS)
def test_client_mistakes_are_4xx_json(server, ctype, body, status, words):
    got, doc = server.post(body, ctype)
    assert got == status, doc
    assert set(doc) == {"error_code", "message"}
    assert words in doc["message"]
    assert "Traceback" not in doc["message"]


def test_unknown_path_and_method(server):
    status, _, doc = server.request("GET", "/predict")
    assert (status, doc["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    status, headers, doc = server.request("GET", "/invocations")
    assert (status, doc["error_code"]) == (405, "METHOD_NOT_ALLOWED")
    assert headers["allow"] == "POST"
    assert server.request("DELETE", "/ping")[0] == 405


def test_body_over_the_limit_is_413(id_server):
    status, doc = id_server.post(" " * 2001)
    assert (status, doc["error_code"]) == (413, "REQUEST_LIMIT_EXCEEDED")
    assert "2000 bytes" in doc["message"]
    assert id_server.post({"dataframe_records": _records()})[0] == 200  # the server goes on


def test_slow_body_gets_408_and_idle_connections_close(id_server):
    with socket.create_connection(("127.0.0.1", id_server.port), timeout=10) as s:
        s.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"REQUEST_TIMEOUT" in answer
    with socket.create_connection(("127.0.0.1", id_server.port), timeout=10) as s:
        start = time.monotonic()
        assert s.recv(1) == b""  # closed by the server after --timeout 1
        assert time.monotonic() - start < 5


# --- anything a client sends: 4xx JSON or an answer, never a 5xx ------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
feature_names = st.sampled_from([*FEATURES, "x", ""])
cells = st.one_of(st.floats(), st.integers(), st.text(max_size=4), st.booleans(), st.none())
mlflow_like = st.builds(
    lambda key, cols, rows: (
        {key: {"columns": cols, "data": rows}}
        if key == "dataframe_split"
        else {key: [dict(zip(cols, r, strict=False)) for r in rows]}
    ),
    st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs"]),
    st.lists(feature_names, min_size=7, max_size=9),
    st.lists(st.lists(cells, min_size=7, max_size=9), max_size=3),
)
csv_text = st.builds(
    lambda head, rows: "\n".join([",".join(head), *(",".join(r) for r in rows)]),
    st.lists(feature_names, min_size=7, max_size=9),
    st.lists(
        st.lists(
            st.sampled_from(["1", "2.5", "", "x", "nan", '"', "1e999", "-0"]),
            min_size=7,
            max_size=9,
        ),
        max_size=3,
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(json.dumps),
        mlflow_like.map(json.dumps),
        csv_text,
        st.text(max_size=200),
    ),
    ctype=st.sampled_from(["application/json", "text/csv", "text/csv; charset=utf-8"]),
)
def test_any_body_gets_an_answer_or_a_4xx_json_error(server, body, ctype):
    status, doc = server.post(body, ctype)
    assert status == 200 or 400 <= status < 500, doc
    if status == 200:
        assert np.isfinite(doc["predictions"]).all()
    else:
        assert set(doc) == {"error_code", "message"} and "\n" not in doc["message"]


# --- SIGTERM ---------------------------------------------------------------------------


def read_response(s: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_sigterm_finishes_requests_in_flight_then_exits_0(built_repo, expected):
    srv = Server(built_repo)
    body = json.dumps({"dataframe_records": _records() * 500}).encode()
    results, stop = [], threading.Event()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        for _ in range(2000):  # bounded, and by the server going away
            if stop.is_set():
                break
            try:
                results.append(srv.post(body, conn=conn))
            except (ConnectionError, http.client.HTTPException, OSError):
                break  # a request the closing server did not accept
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    # A request whose body is half sent when SIGTERM arrives is in flight: it must be answered.
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:half]
        )
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        s.sendall(body[half:])
        answer = read_response(s)
    stop.set()
    for t in threads:
        t.join(60)
    # Its exit after that one SIGTERM: a second one (stop's) could land while Python is
    # finalising, with its handlers back to the default, and kill it with -15.
    try:
        code = srv.proc.wait(STOP_GRACE)
    finally:
        srv.stop()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(json.loads(payload)["predictions"]) == 1000
    assert results, "no request was answered before SIGTERM"
    for status, doc in results:  # every answer that came is whole
        assert status == 200 and len(doc["predictions"]) == 1000
    assert code == 0


# --- packaging --------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["granian", "orjson", "prometheus-client"])
def test_the_server_is_pinned_alike_in_requirements_extra_and_image(package):
    import re

    from tests.helpers import ROOT

    pins = [
        re.findall(rf"{package}==([\w.]+)", (ROOT / name).read_text())
        for name in ("requirements.txt", "pyproject.toml", "Dockerfile")
    ]
    assert all(len(found) == 1 for found in pins), pins
    assert len({found[0] for found in pins}) == 1, pins


def test_startup_mistakes_are_one_line_exit_2(built_repo, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for args, words in [
            (["--model", str(bad)], "bad.json"),
            (["--port", port], "Address already in use"),
            (["--workers", "0"], "not a positive integer"),
            (["--timeout", "61"], "from 1 to 60"),
            (["--id-column", "MedInc"], "not one of the features"),
        ]:
            proc = sh(
                [sys.executable, "-m", "cali_reg", "serve", *args],
                built_repo,
                check=False,
                timeout=60,
            )
            assert proc.returncode == 2, (args, proc.stderr)
            assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
            assert words in proc.stderr


# --- the Open Inference Protocol (KServe V2) --------------------------------------------

V2_ROWS = {"name": "input-0", "shape": [2, 8], "datatype": "FP64", "data": [ROW, ROW2]}


def test_v2_health_server_and_model_metadata(server, built_repo):
    import hashlib

    sha = hashlib.sha256((built_repo / "models" / "quant.json").read_bytes()).hexdigest()
    status, _, doc = server.request("GET", "/v2")
    assert status == 200 and doc["name"] == "cali-reg" and doc["extensions"] == []
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/quant-model/ready",
        f"/v2/models/quant-model/versions/{sha}/ready",
    ):
        assert server.request("GET", path)[::2] == (200, None), path
    for path in ("/v2/models/quant-model", f"/v2/models/quant-model/versions/{sha}"):
        status, _, doc = server.request("GET", path)
        assert status == 200
        assert (doc["name"], doc["versions"]) == ("quant-model", [sha])
        assert doc["inputs"] == [{"name": f, "datatype": "FP64", "shape": [-1]} for f in FEATURES]
        assert doc["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    for path in (
        "/v2/models/float-model",
        "/v2/models/float-model/ready",
        "/v2/models/quant-model/versions/1/ready",
        f"/v2/models/quant-model/versions/{sha[:-1]}{'1' if sha.endswith('0') else '0'}",
    ):
        status, _, doc = server.request("GET", path)
        assert status == 404 and set(doc) == {"error"}, path
    status, doc = server.v2_infer(
        {"inputs": [V2_ROWS]}, f"/v2/models/quant-model/versions/{sha}/infer"
    )
    assert status == 200 and doc["model_version"] == sha
    assert server.v2_infer({"inputs": [V2_ROWS]}, "/v2/models/float-model/infer")[0] == 404


def test_v2_infer_both_input_forms_echo_and_bits(server, expected):
    per_feature = [
        {"name": f, "shape": [2], "datatype": "FP64", "data": [ROW[i], ROW2[i]]}
        for i, f in enumerate(FEATURES)
    ]
    nested = {**V2_ROWS, "data": [ROW, ROW2]}
    flat = {**V2_ROWS, "data": ROW + ROW2}
    for inputs in ([nested], [flat], per_feature[::-1]):
        status, doc = server.v2_infer({"id": "r-1", "parameters": {"p": 1}, "inputs": inputs})
        assert status == 200, doc
        assert (doc["id"], doc["parameters"], doc["model_name"]) == ("r-1", {"p": 1}, "quant-model")
        (out,) = doc["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("predict", "FP64", [2])
        assert np.array_equal(bits(out["data"]), bits(expected))


@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"", 400, "the body is empty"),
        (b"{", 400, "not valid JSON"),
        ({"inputs": [{**V2_ROWS, "shape": [2, 7]}]}, 400, "shape [2, 7] has 7 columns"),
        ({"inputs": [{**V2_ROWS, "datatype": "BYTES"}]}, 400, "datatype BYTES"),
        ({"inputs": [{**V2_ROWS, "data": ROW}]}, 400, "data holds 8 values, shape [2, 8] needs 16"),
        (
            {"inputs": [{**V2_ROWS, "data": [ROW, [*ROW[:4], "x", *ROW[5:]]]}]},
            400,
            'row 2, column Population: "x" is not a number',
        ),
        ({"inputs": [{**V2_ROWS, "data": [ROW, [*ROW[:7], None]]}]}, 400, "column Longitude"),
        ({"id": 7, "inputs": [V2_ROWS]}, 400, "id must be a string"),
    ],
)
def test_v2_client_mistakes_are_4xx_json(server, body, status, words):
    got, doc = server.v2_infer(body)
    assert got == status, doc
    assert set(doc) == {"error"} and words in doc["error"]


def test_v2_wrong_method_and_unknown_v2_path(server):
    status, headers, doc = server.request("GET", "/v2/models/quant-model/infer")
    assert status == 405 and headers["allow"] == "POST" and set(doc) == {"error"}
    status, _, doc = server.request("GET", "/v2/nothing")
    assert status == 404 and set(doc) == {"error"}


v2_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from([*FEATURES, "input-0"]) | json_values,
        "shape": st.lists(st.integers(-1, 9), max_size=3) | json_values,
        "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES"]) | json_values,
        "data": st.lists(cells | st.lists(cells, max_size=9), max_size=9) | json_values,
    }
)
v2_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"inputs": st.lists(v2_tensors, max_size=9) | json_values},
        optional={"id": json_values, "parameters": json_values, "outputs": json_values},
    ),
    # well-formed [N, 8] tensors whose data length may not match the shape
    st.builds(
        lambda n, data: {
            "inputs": [{"name": "x", "shape": [n, 8], "datatype": "FP64", "data": data}]
        },
        st.integers(0, 3),
        st.lists(st.floats(-1e3, 1e3) | cells, max_size=30),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(v2_bodies.map(json.dumps), st.binary(max_size=100)))
def test_any_v2_body_gets_an_answer_or_a_4xx_json_error(server, body):
    status, doc = server.v2_infer(body.encode() if isinstance(body, str) else body)
    assert status == 200 or 400 <= status < 500, doc
    if status == 200:
        assert np.isfinite(doc["outputs"][0]["data"]).all()
    else:
        assert set(doc) == {"error"} and "\n" not in doc["error"]


# --- metrics and the access log --------------------------------------------------------


@pytest.fixture(scope="module")
def counted(built_repo):
    """Two workers, strict checks, the access log as JSON lines."""
    srv = Server(
        built_repo,
        *("--workers", "2", "--strict-columns", "--strict-range", "--access-log", "json"),
    )
    yield srv
    srv.stop()


def scrape(srv) -> dict:
    """{(sample name, frozen labels): value} of /metrics, parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/plain")
    text = resp.read().decode()
    conn.close()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(before, after, name, **labels):
    key = (name, frozenset(labels.items()))
    return after.get(key, 0) - before.get(key, 0)


def test_metrics_are_exact_across_two_workers(counted, built_repo):
    import hashlib

    far = dict(zip(FEATURES, ROW, strict=True)) | {"Population": 1e308}
    before = scrape(counted)
    k = 60
    for i in range(k):  # a new connection each time, so both workers answer
        if i % 3 == 0:
            assert counted.post({"dataframe_records": _records()})[0] == 200
        elif i % 3 == 1:
            assert counted.v2_infer({"inputs": [V2_ROWS]})[0] == 200
        else:
            assert counted.post({"dataframe_records": [far]})[0] == 400
    assert counted.post({"dataframe_records": [{**far, "x": 1}]})[0] == 400
    assert counted.request("GET", "/nowhere")[0] == 404
    after = scrape(counted)

    count = "cali_reg_requests_total"
    assert delta(before, after, count, endpoint="/invocations", code="200") == k // 3
    assert delta(before, after, count, endpoint="/invocations", code="400") == k // 3 + 1
    assert delta(before, after, count, endpoint="/v2/models/{name}/infer", code="200") == k // 3
    assert delta(before, after, count, endpoint="other", code="404") == 1
    assert delta(before, after, count, endpoint="/metrics", code="200") == 1  # the first scrape
    hist = "cali_reg_request_duration_seconds"
    assert delta(before, after, hist + "_count", endpoint="/invocations") == 2 * k // 3 + 1
    assert delta(before, after, hist + "_bucket", endpoint="/invocations", le="+Inf") == (
        2 * k // 3 + 1
    )
    rows = "cali_reg_rows_predicted_total"
    assert delta(before, after, rows, protocol="mlflow") == 2 * k // 3
    assert delta(before, after, rows, protocol="v2") == 2 * k // 3
    errors = "cali_reg_client_errors_total"
    assert delta(before, after, errors, kind="range") == k // 3
    assert delta(before, after, errors, kind="columns") == 1
    assert delta(before, after, errors, kind="not_found") == 1
    assert after[("cali_reg_requests_in_flight", frozenset())] == 1  # this scrape
    sha = hashlib.sha256((built_repo / "models" / "quant.json").read_bytes()).hexdigest()
    model = load_model(built_repo / "models" / "quant.json")
    info = {
        "name": "quant-model",
        "version": sha,
        "scheme": model.scheme,
        "bits": str(model.bits),
    }
    assert after[("cali_reg_model_info", frozenset(info.items()))] == 1
    # the access log: one JSON line per request; the last scrape is not in its own counts
    answered = int(sum(v for (n, _), v in after.items() if n == count)) + 1
    lines = [json.loads(line) for line in counted.access_log(answered)]
    assert len(lines) == answered
    assert set(lines[-1]) == {"time", "method", "path", "status", "duration_ms", "rows"}
    infer = [x for x in lines if x["path"] == "/v2/models/quant-model/infer"]
    assert len(infer) == k // 3 and all(x["rows"] == 2 and x["status"] == 200 for x in infer)
    assert "Traceback" not in counted.stderr()  # a 4xx logs no traceback


def test_rows_outside_the_training_range_are_counted_by_feature(server):
    far = dict(zip(FEATURES, ROW, strict=True)) | {"Population": 1e308, "Latitude": 0.0}
    before = scrape(server)
    status, doc = server.post(
        {"dataframe_records": [far, far, dict(zip(FEATURES, ROW, strict=True))]}
    )
    assert status == 200 and len(doc["predictions"]) == 3
    after = scrape(server)
    name = "cali_reg_rows_outside_training_range_total"
    assert delta(before, after, name, feature="Population") == 2
    assert delta(before, after, name, feature="Latitude") == 2
    assert delta(before, after, name, feature="MedInc") == 0


def test_the_text_access_log_has_one_line_per_request(server):
    # every request answered so far, and this scrape: their lines, once all are written
    before = int(sum(v for (n, _), v in scrape(server).items() if n == "cali_reg_requests_total"))
    before += 1
    assert len(server.access_log(before)) == before
    server.request("GET", "/ping?x=1")
    server.post({"dataframe_records": _records()})
    log = server.access_log(before + 2)
    assert len(log) == before + 2
    last = log[-2:]
    stamp = r"\d\d\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d\d\dZ"
    assert re.fullmatch(stamp + r" GET /ping 200 [\d.]+ms rows=0", last[0]), last
    assert re.fullmatch(stamp + r" POST /invocations 200 [\d.]+ms rows=2", last[1]), last


def test_no_metrics_and_no_access_log(id_server):
    status, _, doc = id_server.request("GET", "/metrics")
    assert status == 404 and "--no-metrics" in doc["message"]
    assert id_server.access_log() == []


# --- the app in process: what a bug logs, and what a client mistake does not ---------------


class FakeScope:
    proto, method = "http", "POST"

    def __init__(self, path, body):
        self.path = path
        self.headers = {"content-type": "application/json", "content-length": str(len(body))}


class FakeProto:
    def __init__(self, body):
        self.body = body

    async def __call__(self):
        return self.body

    def response_bytes(self, status, headers, body):
        self.answer = (status, dict(headers), json.loads(body) if body else None)


def call(app, path, body: bytes):
    import asyncio

    proto = FakeProto(body)
    asyncio.run(app.__rsgi__(FakeScope(path, body), proto))
    return proto.answer


def test_a_bug_is_a_500_with_its_traceback_in_the_log_and_a_4xx_is_not(
    tmp_path, monkeypatch, capfd
):
    from cali_reg import scoring, serve
    from cali_reg.model import FloatModel, dumps

    path = tmp_path / "float.json"
    path.write_text(dumps(FloatModel(FEATURES, np.ones(8), 0.0)))
    app = serve.App(path, access_log="json")
    status, _, doc = call(app, "/invocations", b'{"dataframe_records": []}')
    assert status == 400
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert json.loads(captured.out)["status"] == 400

    def bug(*args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(scoring, "invocations", bug)
    monkeypatch.setattr(scoring, "v2_infer", bug)
    body = json.dumps({"dataframe_records": _records()}).encode()
    status, _, doc = call(app, "/invocations", body)
    assert (status, doc["error_code"]) == (500, "INTERNAL_ERROR")
    assert "ZeroDivisionError" in doc["message"] and "Traceback" not in doc["message"]
    status, _, doc = call(app, "/v2/models/float-model/infer", body)
    assert status == 500 and set(doc) == {"error"}
    captured = capfd.readouterr()
    assert captured.err.count("Traceback") == 2 and "ZeroDivisionError: a bug" in captured.err
    assert [json.loads(line)["status"] for line in captured.out.splitlines()] == [500, 500]


def test_access_lines_are_written_together_whole_soon_and_at_shutdown(tmp_path):
    import asyncio
    import select

    from cali_reg import serve
    from cali_reg.model import FloatModel, dumps

    path = tmp_path / "float.json"
    path.write_text(dumps(FloatModel(FEATURES, np.ones(8), 0.0)))
    app = serve.App(path, access_log="text")
    writes = []
    app.access_log._write = writes.append

    def written() -> int:
        return sum(w.count(b"\n") for w in writes)

    line = serve.access_line("text", "POST", "/invocations", 200, 500_000, 1)
    n = 3 * select.PIPE_BUF // len(line)
    loop = asyncio.new_event_loop()
    try:
        app.__rsgi_init__(loop)
        for _ in range(n):
            app.access_log.add(line)
        # whole lines, a pipe's atomic write at most, as the buffer fills; the rest waits
        assert writes and all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes)
        assert 0 < written() < n
        loop.run_until_complete(asyncio.sleep(serve.LOG_FLUSH_SECONDS * 5))
        assert written() == n
        app.access_log.add(line)
        assert written() == n
        app.__rsgi_del__(loop)  # a worker's shutdown (SIGTERM) writes what still waits
        assert written() == n + 1
    finally:
        loop.close()


def test_sigterm_right_after_answers_loses_no_access_line(built_repo):
    srv = Server(built_repo, "--workers", "1", "--no-metrics")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    k = 20
    try:
        for _ in range(k):
            assert srv.post({"dataframe_records": _records()}, conn=conn)[0] == 200
        conn.close()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(STOP_GRACE) == 0
        log = srv.access_log()
    finally:
        srv.stop()
    # the start-up check's /ping, then the k requests, all written before the worker exited
    assert len(log) == k + 1 and all(" POST /invocations 200 " in x for x in log[1:]), log


def test_a_model_file_with_features_permuted_serves_what_the_original_does(built_repo, tmp_path):
    doc = json.loads((built_repo / "models/float.json").read_text())
    for values in (doc["feature_names"], doc["coef"], *doc["training_range"].values()):
        values[0], values[1], values[7] = values[7], values[0], values[1]
    permuted = tmp_path / "permuted.json"
    permuted.write_text(json.dumps(doc))
    text = (built_repo / "data/sample.csv").read_text()
    want = sh(
        [sys.executable, "-m", "cali_reg", "predict", "--model", "float"], built_repo, input=text
    ).stdout.split()
    srv = Server(built_repo, "--model", str(permuted), "--workers", "1")
    try:
        status, answer = srv.post(text, "text/csv")
        _, _, meta = srv.request("GET", "/v2/models/permuted")
    finally:
        srv.stop()
    assert status == 200 and len(answer["predictions"]) == len(want) == 100
    # the same sums in another order: equal but for the last bits of float addition
    np.testing.assert_allclose(answer["predictions"], np.array(want, float), rtol=1e-13)
    assert [t["name"] for t in meta["inputs"]] == doc["feature_names"]


def test_access_lines_are_one_line_whatever_the_path():
    from cali_reg.serve import access_line

    path = '/x"y\\z' + "é" * 1000
    doc = json.loads(access_line("json", "GET", path, 404, 1_234_499, 0))
    assert doc["path"] == path[:512] and doc["duration_ms"] == 1.234 and doc["status"] == 404
    text = access_line("text", "POST", "/invocations", 200, 500_000, 3).decode()
    assert text.endswith(" POST /invocations 200 0.5ms rows=3\n") and text.count("\n") == 1
    assert len(access_line("text", "GET", path, 404, 0, 0)) < 4096  # one atomic write


@pytest.mark.parametrize(
    "ns,text",
    [
        (0, "0.0"),
        (499, "0.0"),
        (500, "0.001"),  # to the nearest microsecond
        (70_000, "0.07"),
        (1_000_000, "1.0"),
        (1_234_567, "1.235"),
        (12_000_400, "12.0"),
        (123_456_789_012, "123456.789"),
    ],
)
def test_access_lines_give_the_duration_in_milliseconds_as_json_would(ns, text):
    from cali_reg.serve import access_line

    line = access_line("text", "GET", "/ping", 200, ns, 0).decode()
    assert line.endswith(f" GET /ping 200 {text}ms rows=0\n"), line
    assert json.loads(access_line("json", "GET", "/ping", 200, ns, 0))["duration_ms"] == float(text)
    assert text == repr(float(text))  # the text is the float's own shortest form


def test_access_line_time_stamps_follow_the_clock(monkeypatch):
    from cali_reg import serve

    clock = serve._Clock()
    monkeypatch.setattr(serve, "_clock", clock)
    ns = [1_764_677_501_472_900_000]  # 2025-12-02T12:11:41.4729Z
    monkeypatch.setattr(serve.time, "time_ns", lambda: ns[0])
    stamps = []
    for step in (0, 90_000, 10_000, 999_000_000, 3_600_000_000_000):
        ns[0] += step
        stamps.append(json.loads(serve.access_line("json", "GET", "/", 200, 0, 0))["time"])
    assert stamps == [
        "2025-12-02T12:11:41.472Z",
        "2025-12-02T12:11:41.472Z",
        "2025-12-02T12:11:41.473Z",
        "2025-12-02T12:11:42.472Z",
        "2025-12-02T13:11:42.472Z",
    ]


def test_routes():
    from cali_reg.scoring import v2_route
    from cali_reg.serve import route_of

    assert route_of("/invocations", v2_route).handler == "invocations"
    infer = route_of("/v2/models/m/versions/v/infer", v2_route)
    assert (infer.endpoint, infer.name, infer.version) == ("/v2/models/{name}/infer", "m", "v")
    assert route_of("/v2/models/m/versions/v/other", v2_route) is None
    assert route_of("/invocations/", v2_route) is None
