"""Call a V2 (Open Inference Protocol) server with Triton's client; run in the v2client venv.

    python tests/v2_client_check.py URL MODEL VERSION ROWS.json

``tritonclient[http]`` is NVIDIA's client for Triton and any server of the protocol; it is
not written here, so what it accepts is what a team's existing client code accepts. ROWS.json
holds {"features": [...], "rows": [[...], ...]}. Prints one JSON object of what it saw.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def infer(client, model: str, inputs, version: str = "", outputs=True) -> dict:
    requested = [httpclient.InferRequestedOutput("predict", binary_data=False)] if outputs else None
    result = client.infer(
        model, inputs, model_version=version, outputs=requested, request_id="req-1"
    )
    response = result.get_response()
    assert response["id"] == "req-1", response
    (output,) = response["outputs"]
    return {"name": output["name"], "values": result.as_numpy(output["name"]).tolist()}


def tensor(name: str, values: np.ndarray, datatype: str):
    one = httpclient.InferInput(name, list(values.shape), datatype)
    one.set_data_from_numpy(values, binary_data=False)
    return one


def main() -> None:
    url, model, version, rows_path = sys.argv[1:5]
    with open(rows_path) as f:
        doc = json.load(f)
    features, X = doc["features"], np.array(doc["rows"], dtype=np.float64)
    client = httpclient.InferenceServerClient(url, connection_timeout=10, network_timeout=30)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "version_ready": client.is_model_ready(model, version),
        "other_version_ready": client.is_model_ready(model, "0" * 64),
        "server": client.get_server_metadata(),
        "metadata": client.get_model_metadata(model),
        "version_metadata": client.get_model_metadata(model, version),
    }
    # one tensor of shape [N, F]: the protocol leaves its name to the client
    matrix = "input-0"
    seen["fp64"] = infer(client, model, [tensor(matrix, X, "FP64")])
    seen["fp64_pinned"] = infer(client, model, [tensor(matrix, X, "FP64")], version)
    seen["fp32"] = infer(client, model, [tensor(matrix, X.astype(np.float32), "FP32")])
    # tritonclient's default asks for binary outputs; a server without that extension
    # answers JSON, which the client reads as well
    seen["default_outputs"] = infer(client, model, [tensor(matrix, X, "FP64")], outputs=False)
    seen["columns"] = infer(
        client,
        model,
        [tensor(name, np.ascontiguousarray(X[:, j]), "FP64") for j, name in enumerate(features)],
    )
    errors = {}
    for label, call in {
        "unknown_model": lambda: client.get_model_metadata("no-such-model"),
        "wrong_version": lambda: client.get_model_metadata(model, "0" * 64),
        "wrong_shape": lambda: client.infer(model, [tensor(matrix, X[:, :3], "FP64")]),
        "wrong_datatype": lambda: client.infer(
            model, [tensor(matrix, X.astype(np.int64), "INT64")]
        ),
    }.items():
        try:
            call()
            errors[label] = None
        except InferenceServerException as err:
            errors[label] = {"status": err.status(), "message": err.message()}
    seen["errors"] = errors
    client.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
