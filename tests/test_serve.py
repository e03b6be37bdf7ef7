"""cali-reg serve: real HTTP to a real server (granian) on 127.0.0.1, on a free port."""

import csv
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cali_reg.data import FEATURES
from cali_reg.model import load_model
from tests.helpers import project_env, sh

pytest.importorskip("granian")
pytest.importorskip("orjson")

ROW = [8.3252, 41.0, 6.984127, 1.02381, 322.0, 2.555556, 37.88, -122.23]
ROW2 = [5.6431, 52.0, 5.817352, 1.073059, 558.0, 2.547945, 37.85, -122.25]
START_TIMEOUT = 30
STOP_GRACE = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cali-reg serve`` in a subprocess, stopped by its PID."""

    def __init__(self, repo, *args):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cali_reg", "serve", "--port", str(self.port), *args],
            cwd=repo,
            env=project_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if self.request("GET", "/ping")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"the server did not answer /ping within {START_TIMEOUT} s")

    def request(self, method, path, body=None, content_type=None, conn=None):
        """(status, headers, parsed JSON body) of one request."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), (json.loads(data) if data else None)
        finally:
            if own:
                conn.close()

    def post(self, body, content_type="application/json", conn=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        status, _, doc = self.request("POST", "/invocations", body, content_type, conn)
        return status, doc

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(built_repo):
    srv = Server(built_repo)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def id_server(built_repo):
    srv = Server(
        built_repo, "--id-column", "house_id", "--max-body-bytes", "2000", "--timeout", "1"
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


def test_agrees_bit_for_bit_with_predict_on_the_test_split(server, built_repo, tmp_path):
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
    split = {"columns": list(FEATURES), "data": [[float(r[i]) for i in cols] for r in rows[1:]]}
    status, doc = server.post({"dataframe_split": split})
    assert status == 200, doc
    assert np.array_equal(bits(doc["predictions"]), want)


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
    ("application/json", split_with([*FEATURES, "x"], [*ROW, 1]), 400, "unexpected column 'x'"),
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
    ("text/csv", HEADER.replace("Latitude", "Lat") + "\n" + NUMS + "\n", 400, "unexpected column"),
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
    code = srv.stop()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(json.loads(payload)["predictions"]) == 1000
    assert results, "no request was answered before SIGTERM"
    for status, doc in results:  # every answer that came is whole
        assert status == 200 and len(doc["predictions"]) == 1000
    assert code == 0


# --- packaging --------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["granian", "orjson"])
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
