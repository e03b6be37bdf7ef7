"""The sweep and the DVC plots drawn from its tables, run in a built copy of the project."""

import csv

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cali_reg import sweep
from cali_reg.formats import FORMATS
from tests.helpers import dvc, read_json


def sweep_table(repo) -> list[dict]:
    with (repo / "plots/sweep.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_sweep_covers_every_format_setting_and_bit_width(built_repo):
    rows = sweep_table(built_repo)
    assert list(rows[0]) == list(sweep.COLUMNS)
    grid = sweep.variants()
    # the default model fits every format's range: no width is left out
    assert [(r["variant"], int(r["bits"])) for r in rows] == [
        (name, bits) for name, v in grid.items() for bits in FORMATS[v["scheme"]].bits
    ]
    for scheme, fmt in FORMATS.items():
        settings = [v for v in grid.values() if v["scheme"] == scheme]
        if "half_width" in fmt.reads:
            assert {v["half_width"] for v in settings} == set(sweep.HALF_WIDTHS)
        if "padding" in fmt.reads:
            assert {v["padding"] for v in settings} == set(sweep.PADDINGS)
        if "rounding" in fmt.reads:
            assert {(v["rounding"], v["refit_intercept"]) for v in settings} == set(
                sweep.REFINEMENTS
            )
        if not fmt.reads:
            assert settings == [{"scheme": scheme}]
    for row in rows:
        settings = grid[row["variant"]]
        # payload = the stored arrays of the format's file layout, nothing else
        layout = FORMATS[settings["scheme"]].layout(8, int(row["bits"]))
        assert int(row["payload_bytes"]) == sum(d.itemsize * n for d, n in layout.values())
        assert "," not in row["label"] and row["label"] == sweep.label(settings)
    # one featured variant per format: the lines of the plot
    featured = {r["variant"] for r in rows if r["featured"] == "1"}
    assert sorted(grid[v]["scheme"] for v in featured) == sorted(FORMATS)


def test_the_pareto_front_is_the_featured_points_nothing_beats(built_repo):
    rows = [r for r in sweep_table(built_repo) if r["featured"] == "1"]
    points = [(int(r["payload_bytes"]), float(r["r2_loss"])) for r in rows]
    for row, (payload, loss) in zip(rows, points, strict=True):
        beaten = any(p <= payload and q <= loss and (p, q) != (payload, loss) for p, q in points)
        assert (row["pareto"] == "1") == (not beaten), row
    assert all(r["pareto"] == "0" for r in sweep_table(built_repo) if r["featured"] == "0")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)), min_size=1, max_size=40))
def test_pareto_front_keeps_exactly_the_undominated_points(points):
    payload, loss = zip(*points, strict=True)
    front = sweep.pareto_front(payload, loss)
    for (p, q), on in zip(points, front, strict=True):
        dominated = any(a <= p and b <= q and (a < p or b < q) for a, b in points)
        assert on == (not dominated)


def test_sweep_scores_like_the_pipeline(built_repo):
    """The sweep's row of the model the quantize stage chose is exactly what evaluate measured."""
    rows = sweep_table(built_repo)
    doc = read_json(built_repo / "models/quant.json")
    params = yaml.safe_load((built_repo / "params.yaml").read_text())["quantize"]
    name = next(
        n
        for n, v in sweep.variants().items()
        if v["scheme"] == doc["scheme"]
        and all(v[key] == params[key] for key in FORMATS[doc["scheme"]].reads)
    )
    q = read_json(built_repo / "metrics/quant.json")
    row = next(r for r in rows if r["variant"] == name and int(r["bits"]) == q["bits"])
    f = read_json(built_repo / "metrics/float.json")
    assert [int(row["payload_bytes"]), float(row["r2"]), float(row["rmse"])] == [
        q["payload_bytes"],
        q["r2"],
        q["rmse"],
    ]
    assert float(row["r2_loss"]) == pytest.approx(f["r2"] - q["r2"], abs=2e-6)
    # and the seed's scheme at 8 bits gives the seed's published figures
    seed = next(r for r in rows if r["variant"] == "window-h0.05" and r["bits"] == "8")
    assert seed["payload_bytes"] == "81" and float(seed["r2"]) == pytest.approx(0.4854, abs=5e-5)


def test_sweep_reruns_alone_when_only_its_code_changes(repo):
    with (repo / "stages/sweep.py").open("a") as fh:
        fh.write("\n# touched\n")
    out = dvc("repro", cwd=repo).stdout
    assert "Running stage 'sweep'" in out
    assert "Running stage 'quantize'" not in out and "Running stage 'evaluate'" not in out
