"""A V2 client library not written here, Triton's ``tritonclient[http]``, against the server.

It runs in a venv of its own (tests/helpers/venvs.py), as a team's client code would, and talks to
``cali-reg serve`` over real HTTP on 127.0.0.1: health, metadata, inference with the
tensor shapes and datatypes the protocol allows, and the errors it reads back.
"""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from cali_reg.data import FEATURES
from cali_reg.model import load_model
from tests.helpers import ROOT
from tests.helpers.venvs import tool_python

V2_CLIENT_PINS = ["tritonclient[http]==2.73.0"]
N_ROWS = 50


@pytest.fixture(scope="module")
def client_python():
    return tool_python("v2client", V2_CLIENT_PINS)


@pytest.fixture(scope="module")
def rows(built_repo) -> np.ndarray:
    data = np.genfromtxt(built_repo / "data" / "sample.csv", delimiter=",", names=True)
    return np.column_stack([data[name] for name in FEATURES])[:N_ROWS]


@pytest.mark.parametrize("model", ["quant", "float"])
def test_tritonclient_health_metadata_and_inference(
    built_repo, client_python, rows, tmp_path, model
):
    from tests.helpers.server import Server

    path = built_repo / "models" / f"{model}.json"
    name, version = f"{model}-model", hashlib.sha256(path.read_bytes()).hexdigest()
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps({"features": list(FEATURES), "rows": rows.tolist()}))
    srv = Server(built_repo, "--model", model, "--workers", "1")
    try:
        proc = subprocess.run(
            [
                str(client_python),
                str(ROOT / "tests" / "v2_client_check.py"),
                f"127.0.0.1:{srv.port}",
                name,
                version,
                str(rows_file),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        assert srv.stop() == 0
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)

    assert seen["live"] and seen["ready"] and seen["model_ready"] and seen["version_ready"]
    assert not seen["other_version_ready"]
    assert seen["server"]["name"] == "cali-reg" and "extensions" in seen["server"]
    metadata = seen["metadata"]
    assert metadata == seen["version_metadata"]
    assert metadata["name"] == name and version in metadata["versions"]
    # one input per feature, in the model file's order, as MLServer's `pd` content type
    assert metadata["inputs"] == [
        {"name": f, "datatype": "FP64", "shape": [-1]} for f in load_model(path).feature_names
    ]
    assert metadata["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]

    # FP64 answers are `cali-reg predict`'s, bit for bit, however the rows are sent
    csv = ",".join(FEATURES) + "\n" + "\n".join(",".join(map(repr, r)) for r in rows.tolist())
    out = subprocess.run(
        [sys.executable, "-m", "cali_reg", "predict", "--model", model],
        cwd=built_repo,
        input=csv,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = np.array([float(v) for v in out.stdout.split()])
    for key in ("fp64", "fp64_pinned", "default_outputs", "columns"):
        got = np.array(seen[key]["values"], dtype=np.float64).ravel()
        assert got.view(np.uint64).tolist() == expected.view(np.uint64).tolist(), key
        assert seen[key]["name"] == "predict"
    # FP32 rows are the same rows rounded to float32, then predicted in float64
    rounded = rows.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(
        np.ravel(seen["fp32"]["values"]), load_model(path).predict(rounded)
    )

    errors = seen["errors"]
    assert errors["unknown_model"]["status"] == "404"
    assert "no-such-model" in errors["unknown_model"]["message"]
    assert errors["wrong_version"]["status"] == "404"
    for label in ("wrong_shape", "wrong_datatype"):
        assert errors[label]["status"] == "400", (label, errors[label])
        assert errors[label]["message"], label
