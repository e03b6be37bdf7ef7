"""The plots: DVC draws each one, and `cali-reg plots` renders the same specs to images."""

import json
import struct

import pytest

from cali_reg import plots
from tests.helpers import call_cli, dvc, sh

DVC_PLOTS = {"tradeoff", "robustness", "quant_vs_float", "predicted_vs_actual"}


def shown(repo) -> dict:
    out = json.loads(dvc("plots", "show", "--json", cwd=repo).stdout)
    assert "errors" not in out
    return {plot_id: revs[0]["content"] for plot_id, revs in out["data"].items()}


@pytest.fixture(scope="module")
def specs(built_repo) -> dict:
    """What ``dvc plots show --json`` gives in the built copy (it takes seconds: once)."""
    return shown(built_repo)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_plot_has_data_words_and_a_log_scale_where_losses_are_shown(specs):
    assert set(specs) >= DVC_PLOTS
    for plot_id, spec in specs.items():
        assert spec["data"]["values"], plot_id
        text = json.dumps(spec)
        assert "<DVC_" not in text, plot_id  # every anchor filled in
        for layer in spec["layer"]:
            for channel in ("x", "y"):
                title = layer.get("encoding", {}).get(channel, {}).get("title")
                if title:  # axis titles are words with units, not field names
                    assert " " in title, (plot_id, title)
    tradeoff = specs["tradeoff"]
    scales = [layer["encoding"]["y"]["scale"] for layer in tradeoff["layer"]]
    assert all(s["type"] == "log" and s["domain"][0] <= 1e-4 for s in scales)
    assert any(
        layer.get("transform") == [{"filter": "datum.pareto == 1"}] for layer in tradeoff["layer"]
    )
    lines = [
        layer for layer in specs["predicted_vs_actual"]["layer"] if layer["mark"]["type"] == "line"
    ]
    assert lines and lines[0]["data"]["values"][0] == {"x": 0, "y": 0}  # y = x


def test_cali_reg_plots_renders_each_dvc_plot_to_a_png(built_repo, specs, tmp_path):
    out = tmp_path / "images"
    proc = sh(["cali-reg", "plots", "--out", str(out)], built_repo)
    written = {line.rsplit("/", 1)[-1] for line in proc.stdout.split()}
    assert written == {f"{plot_id}.png" for plot_id in specs}
    for name in written:
        width, height = png_size((out / name).read_bytes())
        assert 600 <= width <= 3000 and 400 <= height <= 3000, (name, width, height)


def test_plots_outside_a_dvc_project_is_one_line(tmp_path):
    with pytest.raises(plots.UserError, match="'dvc plots show' failed"):
        plots.dvc_specs(tmp_path)
    proc = call_cli(["plots"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_dvc_draws_the_page_online_and_with_the_offline_template(built_repo, tmp_path):
    out = tmp_path / "html"
    dvc("plots", "show", "-o", str(out), cwd=built_repo)
    page = (out / "index.html").read_text()
    assert page.count("vegaEmbed(") >= len(DVC_PLOTS) and "Accuracy lost against bytes" in page
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
    assert "cdn.jsdelivr" not in page and page.count("vegaEmbed(") >= len(DVC_PLOTS)
    assert '<script src="../.vega/node_modules/vega-embed/build/vega-embed.min.js">' in page


def test_bad_options_and_an_unwritable_folder_are_one_line(built_repo, tmp_path):
    for args, words in [
        (["--scale", "-1"], "not a scale from 0.5 to 8"),
        (["--out", "/proc/no-such-dir"], "cannot write the images"),
    ]:
        proc = call_cli(["plots", *args], built_repo)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
