"""The report: a real commit against another, as a reviewer would see a pull request."""

import json
import re
import struct
import sys
from pathlib import Path

import pytest

from cali_reg import report
from cali_reg.errors import UserError
from tests.helpers import copy_built, dvc, once_per_run, read_json, sh

PNG = b"\x89PNG\r\n\x1a\n"


def commit_an_experiment(built_repo: Path, repo: Path) -> None:
    """In ``repo``: the committed state, then `-S quantize.margin=0.01` committed on top of
    it (main stays at the first)."""
    copy_built(built_repo, repo)
    dvc("exp", "run", "-S", "quantize.margin=0.01", cwd=repo)
    sh(["git", "commit", "-qam", "margin 0.01"], repo)
    sh(["git", "branch", "-f", "main", "HEAD~1"], repo)
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""


@pytest.fixture(scope="module")
def two_commits(built_repo, run_dir, tmp_path_factory) -> Path:
    """``commit_an_experiment``, made once per test run; a copy of it for this worker."""
    made = once_per_run(
        run_dir / "two-commits", lambda base: commit_an_experiment(built_repo, base / "repo")
    )
    return copy_built(made / "repo", tmp_path_factory.mktemp("report") / "repo")


def run_report(repo: Path, out: Path, *args: str, check=True):
    return sh([sys.executable, "-m", "cali_reg", "report", "--out", str(out), *args], repo, check)


def rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown table rows whose first cell is ``first_cell``."""
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            found.append(cells)
    return found


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_the_report_names_the_param_and_shows_bits_and_r2_moving(two_commits, tmp_path):
    out = tmp_path / "out"
    printed = run_report(two_commits, out, "--base", "HEAD~1").stdout.split()
    text = (out / "report.md").read_text()
    base = sh(["git", "rev-parse", "--short", "HEAD~1"], two_commits).stdout.strip()
    assert f"Base: `{base}`" in text
    assert "Nothing changed" not in text
    old = json.loads(sh(["git", "show", "HEAD~1:metrics/quant.json"], two_commits).stdout)
    new = read_json(two_commits / "metrics/quant.json")
    assert new["payload_bytes"] < old["payload_bytes"] and new["r2"] != old["r2"]
    moves = [f"{old['bits']} → {new['bits']} bits"] if new["bits"] != old["bits"] else []
    moves += [f"{old['payload_bytes']} → {new['payload_bytes']} B"]
    moves += [f"test R² {old['r2']:.6g} → {new['r2']:.6g}"]
    assert f"**Summary**: 1 param(s) changed; the quantised model: {', '.join(moves)}." in text

    assert rows(text, "`quantize.margin`") == [["`quantize.margin`", "0.001", "0.01"]]
    [bits] = rows(text, "`bits`")
    assert bits[1:4] == ["64", "64", "0"]  # the float model did not move
    assert bits[4:6] == [str(old["bits"]), str(new["bits"])]
    [payload] = rows(text, "`payload_bytes`")
    assert payload[4:] == [
        str(old["payload_bytes"]),
        str(new["payload_bytes"]),
        f"{new['payload_bytes'] - old['payload_bytes']:+d}",
    ]
    [r2] = rows(text, "`r2`")
    assert r2[3] == "0" and r2[4] != r2[5]
    assert float(r2[5]) == new["r2"]
    assert float(r2[6]) == pytest.approx(float(r2[5]) - float(r2[4]), abs=1e-9)
    # the robustness section: the selection by margin, and each model's format marked at
    # its own width and payload
    assert "The selection by margin, repeated on each split" in text
    for name, m in (("base model", old), ("workspace model", new)):
        marked = re.findall(rf"^\| {m['bits']} ◀ [^|]*{name}[^|]* \| (\d+) \|", text, re.M)
        assert marked == [str(m["payload_bytes"])], name

    # every image it names is there and is a PNG; none is left unnamed
    named = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(p).name for p in printed[1:]} == set(named)
    assert {"quant_vs_float.png", "predicted_vs_actual.png", "tradeoff.png"} <= set(named)
    for name in named:
        width, height = png_size((out / name).read_bytes())
        assert width > 300 and height > 200, name
    # the predictions changed: the base and the workspace are both drawn
    assert "quant_vs_float (base and workspace)" in text


@pytest.mark.slow
def test_a_commit_against_itself_has_nothing_changed(two_commits, tmp_path):
    printed = run_report(two_commits, tmp_path / "same", "--base", "HEAD").stdout.split()
    text = (tmp_path / "same" / "report.md").read_text()
    assert "**Nothing changed**" in text
    assert "No param changed." in text
    assert len(printed) == 1  # report.md alone: no plots to compare
    for _, *cells in rows(text, "`r2`") + rows(text, "`bits`"):
        assert cells[2] == "0" and cells[5] == "0"


@pytest.mark.slow
def test_by_default_against_the_merge_base_and_images_url_links_the_images(two_commits, tmp_path):
    url = "https://github.com/o/r/actions/runs/1#artifacts"
    run_report(two_commits, tmp_path / "c", "--images-url", url)  # no --base
    text = (tmp_path / "c" / "report.md").read_text()
    assert "(the merge base with main)" in text
    assert rows(text, "`quantize.margin`") == [["`quantize.margin`", "0.001", "0.01"]]
    # the images linked, not embedded
    assert "![" not in text
    link = f"- [quant_vs_float (base and workspace): quant_vs_float.png]({url})"
    assert link in text.splitlines()
    assert (tmp_path / "c" / "quant_vs_float.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "args,where,message",
    [
        (["--base", "no-such-rev"], "repo", "unknown revision 'no-such-rev'"),
        ([], "outside", "is not in a git repository"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, args, where, message):
    cwd = tmp_path / where
    cwd.mkdir()
    if where == "repo":
        sh(["git", "init", "-q", "-b", "main"], cwd)
        sh(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd)
    proc = run_report(cwd, tmp_path / "out", *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_without_a_main_branch_it_asks_for_a_base(tmp_path):
    sh(["git", "init", "-q", "-b", "feature"], tmp_path)
    sh(["git", "commit", "-q", "--allow-empty", "-m", "x"], tmp_path)
    with pytest.raises(UserError, match="no main branch here to compare with; give one: --base"):
        report.resolve_base(tmp_path, None)


def test_without_dvc_it_says_how_to_install_it(monkeypatch, tmp_path):
    real = report.importlib.util.find_spec
    monkeypatch.setattr(
        report.importlib.util, "find_spec", lambda name: None if name == "dvc" else real(name)
    )
    with pytest.raises(UserError, match=r"the report needs dvc: run \./setup\.sh"):
        report.build(tmp_path, "HEAD", tmp_path / "out")


def fake_plots_diff(monkeypatch, sha: str, plots: dict[str, tuple[list, list, bool]]) -> None:
    """Make ``dvc plots diff`` answer with these (base rows, workspace rows, colours by rev)."""

    def answer(root, *args):
        assert args == ("plots", "diff", sha)
        data = {}
        for plot_id, (base_rows, work_rows, by_rev) in plots.items():
            values = [r | {"rev": sha} for r in base_rows]
            values += [r | {"rev": "workspace"} for r in work_rows]
            encoding = {"color": {"field": "rev"}} if by_rev else {}
            spec = {"data": {"values": values}, "mark": "line", "encoding": encoding}
            data[plot_id] = [{"type": "vega", "revisions": ["workspace", sha], "content": spec}]
        return {"data": data}

    monkeypatch.setattr(report, "dvc_json", answer)


def test_each_plot_is_drawn_once_if_unchanged_and_both_revisions_never_share_a_line(
    monkeypatch, tmp_path
):
    sha = "a" * 40
    old, new = [{"x": 1, "y": 2}], [{"x": 1, "y": 3}]
    fake_plots_diff(
        monkeypatch,
        sha,
        {"same": (old, old, False), "coloured": (old, new, True), "lines": (old, new, False)},
    )
    images = {name: (caption, spec) for name, caption, spec in report.plot_images(tmp_path, sha)}
    assert {n: c for n, (c, _) in images.items()} == {
        "same": "unchanged",
        "coloured": "base and workspace",
        "lines-base": "base",
        "lines-workspace": "workspace",
    }
    assert images["same"][1]["data"]["values"] == [{"x": 1, "y": 2, "rev": "workspace"}]
    assert images["lines-base"][1]["data"]["values"] == [{"x": 1, "y": 2, "rev": "base aaaaaaa"}]
    assert images["lines-workspace"][1]["data"]["values"] == [{"x": 1, "y": 3, "rev": "workspace"}]
    revs = {r["rev"] for r in images["coloured"][1]["data"]["values"]}
    assert revs == {"base aaaaaaa", "workspace"}  # the legend names the base by its short id


@pytest.mark.parametrize(
    "old,new,shown",
    [(4, 3, "-1"), (0.573381, 0.578787, "+0.005406"), (0.5, 0.5, "0"), (None, 1, "–")],
)
def test_deltas_are_signed_and_free_of_float_noise(old, new, shown):
    assert report.delta(old, new) == shown
