"""cali_reg.metrics: the samples written per request are the ones prometheus_client scrapes."""

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import sh

pytest.importorskip("prometheus_client")

ROOT = Path(__file__).resolve().parents[1]

# In a process of its own: prometheus_client picks its multiprocess mode at import, from
# PROMETHEUS_MULTIPROC_DIR, and this test process may have imported it already.
COUNT = """
import sys
from cali_reg.metrics import Metrics, scrape

m = Metrics("m", "v", "float", 64, ["a", "b"])
for _ in range(5):
    m.started()
m.finished("/x", 200, 0.0004, "mlflow", 3)
m.finished("/x", 400, 0.003, error="range")  # another status: the same latency samples
m.finished("/x", 200, 7.0, "v2", 2, outside=__import__("numpy").array([0, 2]))
m.finished("/y", 404, 0.0005, error="a kind not listed")
sys.stdout.write(scrape()[0].decode())
"""


def test_the_per_request_writes_are_what_a_scrape_reads(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = sh([sys.executable, "-c", f"import os; os.environ.update({env!r})\n{COUNT}"], ROOT).stdout
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }

    def value(name, **labels):
        return got[name, tuple(sorted(labels.items()))]

    assert value("cali_reg_requests_total", endpoint="/x", code="200") == 2
    assert value("cali_reg_requests_total", endpoint="/x", code="400") == 1
    assert value("cali_reg_requests_total", endpoint="/y", code="404") == 1
    hist = "cali_reg_request_duration_seconds"
    assert value(hist + "_count", endpoint="/x") == 3
    assert value(hist + "_sum", endpoint="/x") == pytest.approx(7.0034)
    # cumulative buckets: a duration counts in the first bound at or above it, and on
    assert value(hist + "_bucket", endpoint="/x", le="0.0005") == 1
    assert value(hist + "_bucket", endpoint="/y", le="0.0005") == 1  # on the bound
    assert value(hist + "_bucket", endpoint="/x", le="0.001") == 1
    assert value(hist + "_bucket", endpoint="/x", le="0.005") == 2
    assert value(hist + "_bucket", endpoint="/x", le="5.0") == 2
    assert value(hist + "_bucket", endpoint="/x", le="+Inf") == 3
    assert value("cali_reg_rows_predicted_total", protocol="mlflow") == 3
    assert value("cali_reg_rows_predicted_total", protocol="v2") == 2
    assert value("cali_reg_rows_outside_training_range_total", feature="a") == 0
    assert value("cali_reg_rows_outside_training_range_total", feature="b") == 2
    assert value("cali_reg_client_errors_total", kind="range") == 1
    assert value("cali_reg_client_errors_total", kind="a kind not listed") == 1
    assert value("cali_reg_client_errors_total", kind="timeout") == 0  # listed: a zero
    assert value("cali_reg_requests_in_flight") == 1
    assert os.listdir(tmp_path)  # the counts went through the multiprocess files


# Enough new endpoints that prometheus_client grows the files (1 MiB at first) and maps
# them anew: the counts written after that still land where a scrape reads them.
GROW = """
import os, sys
from cali_reg.metrics import Metrics, scrape

m = Metrics("m", "v", "float", 64, ["a"])
m.started()
m.finished("/first", 200, 0.001, "mlflow", 1)
path = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"histogram_{os.getpid()}.db")
k = 0
while os.path.getsize(path) <= 1 << 20:
    m.started()
    m.finished(f"/endpoint-{k}", 200, 0.001)
    k += 1
m.started()
m.started()
m.finished("/first", 200, 0.002, "v2", 2)
m.finished("/first", 400, 0.003, error="a kind not listed")
sys.stdout.write(f"{k}\\n" + scrape()[0].decode())
"""


def test_counts_stay_exact_when_the_files_grow(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = sh([sys.executable, "-c", f"import os; os.environ.update({env!r})\n{GROW}"], ROOT).stdout
    k, text = out.split("\n", 1)
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert int(k) > 100  # the file did grow
    assert got["cali_reg_requests_total", (("code", "200"), ("endpoint", "/first"))] == 2
    assert got["cali_reg_requests_total", (("code", "400"), ("endpoint", "/first"))] == 1
    assert got["cali_reg_requests_total", (("code", "200"), ("endpoint", "/endpoint-0"))] == 1
    assert got["cali_reg_request_duration_seconds_count", (("endpoint", "/first"),)] == 3
    assert got["cali_reg_request_duration_seconds_sum", (("endpoint", "/first"),)] == (
        pytest.approx(0.006)
    )
    assert got["cali_reg_rows_predicted_total", (("protocol", "mlflow"),)] == 1
    assert got["cali_reg_rows_predicted_total", (("protocol", "v2"),)] == 2
    assert got["cali_reg_client_errors_total", (("kind", "a kind not listed"),)] == 1
    assert got["cali_reg_requests_in_flight", ()] == 0
    total = sum(v for (name, _), v in got.items() if name == "cali_reg_requests_total")
    assert total == int(k) + 3
