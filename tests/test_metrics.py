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
m.in_flight.inc(1)
m.observe("/x", 200, 0.0004, "mlflow", 3)
m.observe("/x", 400, 0.003, error="range")  # another status: the same latency samples
m.observe("/x", 200, 7.0, "v2", 2, outside=__import__("numpy").array([0, 2]))
m.observe("/y", 404, 0.0005, error="a kind not listed")
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
