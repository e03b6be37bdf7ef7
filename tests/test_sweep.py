"""The sweep and the DVC plots drawn from its tables, run in a built copy of the project."""

import json

import numpy as np
import pytest
import yaml

from cali_reg import sweep
from cali_reg.data import read_table
from cali_reg.model import DECODERS
from cali_reg.quantize import SCHEMES
from tests.conftest import dvc, read_json

PLOT_IDS = {"predicted_vs_actual", "residuals_float", "residuals_quant", "tradeoff", "refinements"}


def sweep_tables(repo) -> dict[str, np.ndarray]:
    return {p.stem: read_table(p, sweep.COLUMNS) for p in (repo / "plots/sweep").glob("*.csv")}


def test_sweep_covers_every_scheme_margin_and_bit_width(built_repo):
    tables = sweep_tables(built_repo)
    grid = sweep.variants()
    assert set(tables) == set(grid)
    for scheme, spec in SCHEMES.items():
        settings = [v for v in grid.values() if v["scheme"] == scheme]
        if spec.uses_margin:
            assert {v["margin"] for v in settings} == set(sweep.MARGINS)
        if spec.refines:
            assert {(v["rounding"], v["refit_intercept"]) for v in settings} == set(
                sweep.REFINEMENTS
            )
    for name, table in tables.items():
        assert table[:, 0].tolist() == list(range(2, 17)), name
        assert np.all(table[:, 1] > 0) and np.all(np.isfinite(table[:, 2:])), name
        # payload = the stored arrays of the scheme's file layout, nothing else
        layout = DECODERS[grid[name]["scheme"]].layout
        expected = [
            sum(dtype.itemsize * n for dtype, n in layout(8, bits).values())
            for bits in range(2, 17)
        ]
        assert table[:, 1].tolist() == expected, name


def test_sweep_scores_like_the_pipeline(built_repo):
    """A sweep row at the pipeline's params is exactly what evaluate measured."""
    tables = sweep_tables(built_repo)
    params = yaml.safe_load((built_repo / "params.yaml").read_text())["quantize"]
    name = next(
        n
        for n, v in sweep.variants().items()
        if v["scheme"] == params["scheme"]
        and v["rounding"] == params["rounding"]
        and v["refit_intercept"] == params["refit_intercept"]
        and v["margin"] in (None, params["margin"])
    )
    q = read_json(built_repo / "metrics/quant.json")  # at the width quantize.margin chose
    row = tables[name][q["bits"] - 2]
    assert row.tolist() == [q["bits"], q["payload_bytes"], q["r2"], q["rmse"], q["mae"]]
    # and the seed's scheme at 8 bits gives the seed's published figures
    seed = tables["window-m0.05"][8 - 2]
    assert seed[1] == 81 and seed[2] == pytest.approx(0.4854, abs=5e-5)


def test_sweep_reruns_alone_when_only_its_code_changes(repo):
    with (repo / "stages/sweep.py").open("a") as fh:
        fh.write("\n# touched\n")
    out = dvc("repro", cwd=repo).stdout
    assert "Running stage 'sweep'" in out
    assert "Running stage 'quantize'" not in out and "Running stage 'evaluate'" not in out


def test_dvc_plots_show_renders_every_plot(built_repo, tmp_path):
    shown = json.loads(dvc("plots", "show", "--json", cwd=built_repo).stdout)
    assert "errors" not in shown
    plots = shown["data"]
    assert set(plots) >= PLOT_IDS
    for plot_id in PLOT_IDS:
        spec = plots[plot_id][0]["content"]
        assert spec["data"]["values"], plot_id
    tradeoff = plots["tradeoff"][0]["content"]
    drawn = {row["filename"] for row in tradeoff["data"]["values"]}
    assert {
        f"{name}.csv" for name in ("window-m0.05", "pow2-error_aware-refit", "pow2-optimal-refit")
    } <= drawn
    assert {f"affine-m{m:g}-error_aware-refit.csv" for m in sweep.MARGINS} <= drawn
    assert tradeoff["encoding"]["x"]["field"] == "payload_bytes"
    assert tradeoff["encoding"]["y"]["field"] == "r2"

    out = tmp_path / "html"
    dvc("plots", "show", "-o", str(out), cwd=built_repo)
    page = (out / "index.html").read_text()
    assert page.count("vegaEmbed(") >= len(PLOT_IDS)
    assert "Accuracy against size" in page and "cdn.jsdelivr.net/npm/vega@" in page

    offline = tmp_path / "offline"
    dvc(
        "plots",
        "show",
        "--html-template",
        ".dvc/plots/offline.html",
        "-o",
        str(offline),
        cwd=built_repo,
    )
    page = (offline / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and page.count("vegaEmbed(") >= len(PLOT_IDS)
    assert '<script src="../.vega/node_modules/vega-embed/build/vega-embed.min.js">' in page
