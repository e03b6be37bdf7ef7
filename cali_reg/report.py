"""The report command: what the workspace changes against a base commit, for a reviewer.

    cali-reg report [--base REV] [--out DIR] [--images-url URL]

Writes DIR/report.md (default: report/) with the params that changed, the metrics of
both models base against workspace with their deltas, the default scheme's 20-split
robustness summary from plots/robustness.csv, and each DVC plot drawn from
``dvc plots diff`` as PNG next to it. Everything comes from git and DVC on this
machine: no Studio, no token, no network. The base defaults to the merge base with
the main branch, as a pull request would be compared.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

from cali_reg.errors import UserError
from cali_reg.files import atomic_write_bytes, atomic_write_text
from cali_reg.restore import git, print_lines, repo_root

OUT = Path("report")
MAIN_BRANCHES = ("main", "origin/main", "master", "origin/master")
MODELS = {"float": "metrics/float.json", "quant": "metrics/quant.json"}
COMPARE = "metrics/compare.json"
ROBUSTNESS = "plots/robustness.csv"
WORKSPACE = "workspace"


# --- gathering -------------------------------------------------------------


def resolve_base(root: Path, base: str | None) -> tuple[str, str]:
    """The base commit's full id and how it was chosen (for the report's header)."""
    if base is None:
        for branch in MAIN_BRANCHES:
            if _rev(root, branch):
                merge_base = git(root, "merge-base", "HEAD", branch).strip()
                return merge_base, f"the merge base with {branch}"
        raise UserError("no main branch here to compare with; give one: --base REV")
    sha = _rev(root, base)
    if not sha:
        raise UserError(
            f"unknown revision {base!r}: give a commit, branch or tag of this repository "
            "(a shallow clone may need 'git fetch --unshallow')"
        )
    return sha, base


def _rev(root: Path, name: str) -> str | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() or None


def dvc_json(root: Path, *args: str) -> dict:
    """``dvc <args> --json`` parsed; a one-line UserError if DVC fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"'dvc {' '.join(args)}' failed: {detail.removeprefix('ERROR: ')}")
    return json.loads(proc.stdout or "{}")


def base_file(root: Path, sha: str, path: str) -> str | None:
    """A file's text at the base commit, or None if it did not exist there."""
    proc = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=root, capture_output=True)
    return proc.stdout.decode() if proc.returncode == 0 else None


def robustness_rows(text: str | None) -> list[dict]:
    """The rows of a robustness table (plots/robustness.csv), as dicts of strings."""
    return list(csv.DictReader(io.StringIO(text))) if text else []


def served_variant(rows: list[dict], bits, payload) -> str | None:
    """The variant of the first row at this width and payload: the quantised model's format.

    The metrics name no format, but a width and a payload tell them apart in practice
    (the payload counts every byte of the format's layout); None if no row matches.
    """
    return next(
        (
            r["variant"]
            for r in rows
            if not r["variant"].startswith("selected")
            and r["bits"] == str(bits)
            and r["payload_bytes"] == str(payload)
        ),
        None,
    )


# --- formatting ------------------------------------------------------------


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def delta(old, new) -> str:
    if not isinstance(old, int | float) or not isinstance(new, int | float):
        return "–"
    diff = round(new - old, 9)
    if diff == 0:
        return "0"
    return f"{diff:+.6g}" if isinstance(diff, float) else f"{diff:+d}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary(params: dict, metrics: dict) -> str:
    """One line for the busy reviewer: how many params moved, and the quantised model."""
    count = sum(len(v) for v in params.values())
    quant = metrics.get(MODELS["quant"], {})
    moves = []
    for name, unit in (("bits", " bits"), ("payload_bytes", " B"), ("r2", "")):
        v = quant.get(name)
        if v:
            label = "test R² " if name == "r2" else ""
            moves.append(f"{label}{fmt(v.get('old'))} → {fmt(v.get('new'))}{unit}")
    model = f"; the quantised model: {', '.join(moves)}" if moves else ""
    return f"**Summary**: {count} param(s) changed{model}."


def params_section(changed: dict) -> str:
    rows = [
        [f"`{name}`", fmt(v.get("old")), fmt(v.get("new"))]
        for path in sorted(changed)
        for name, v in sorted(changed[path].items())
    ]
    if not rows:
        return "## Params\n\nNo param changed."
    return "## Params that changed\n\n" + table(["param", "base", WORKSPACE], rows)


def metrics_section(metrics: dict) -> str:
    names = sorted({k for m in MODELS.values() for k in metrics.get(m, {})})
    rows = []
    for name in names:
        row = [f"`{name}`"]
        for path in MODELS.values():
            v = metrics.get(path, {}).get(name, {})
            row += [fmt(v.get("old")), fmt(v.get("new")), delta(v.get("old"), v.get("new"))]
        rows.append(row)
    header = ["metric"] + [f"{m} {col}" for m in MODELS for col in ("base", WORKSPACE, "Δ")]
    text = "## Metrics of both models (test split)\n\n" + table(header, rows)
    compare = metrics.get(COMPARE, {})
    if compare:
        rows = [
            [f"`{name}`", fmt(v.get("old")), fmt(v.get("new")), delta(v.get("old"), v.get("new"))]
            for name, v in sorted(compare.items())
        ]
        text += f"\n\nThe quantised model against the float one (`{COMPARE}`):\n\n" + table(
            ["metric", "base", WORKSPACE, "Δ"], rows
        )
    return text


def robustness_section(base_text: str | None, work_text: str | None, models: dict) -> str:
    """The 20-split figures of the selection by margin, and of each model's format by width.

    ``models`` maps "base model" and "workspace model" to (bits, payload_bytes).
    """
    work, base = robustness_rows(work_text), robustness_rows(base_text)
    if not work:
        return f"## Robustness\n\n`{ROBUSTNESS}` is missing or empty in the workspace."
    same = base_text == work_text
    note = (
        "unchanged from base"
        if same
        else ("not in base" if base_text is None else "changed: base columns on the right")
    )
    header = ["mean ΔR²", "worst ΔR²"] + ([] if same else ["base mean ΔR²", "base worst ΔR²"])

    def figures(row: dict, old: dict | None) -> list[str]:
        cells = [row["test_delta_r2_mean"], row["test_delta_r2_worst"]]
        if not same:
            old = old or {}
            cells += [old.get("test_delta_r2_mean", "–"), old.get("test_delta_r2_worst", "–")]
        return cells

    def key(r: dict) -> tuple[str, str]:
        return r["variant"], r["bits"]

    base_by_key = {key(r): r for r in base}
    text = [
        "## Robustness over 20 splits",
        f"From `{ROBUSTNESS}` ({note}): test R² of the quantised model minus the float "
        "model's, each re-fitted and quantised on its own seeded split; mean and worst over "
        "the splits.",
    ]
    selected = [r for r in work if r["variant"].startswith("selected")]
    if selected:
        rows = [
            [r["label"], r["payload_bytes"], *figures(r, base_by_key.get(key(r)))] for r in selected
        ]
        text.append(
            "The selection by margin, repeated on each split (the largest payload it picked):"
            "\n\n" + table(["selection", "payload (B)", *header], rows)
        )
    # each model's format, read in its own revision's table
    variant_of = {
        name: served_variant(base if name == "base model" and base else work, *shape)
        for name, shape in models.items()
    }
    for name, shape in models.items():
        if variant_of[name] is None:
            text.append(f"The {name} ({fmt(shape[0])} bits, {fmt(shape[1])} B) matches no row.")
    for variant in dict.fromkeys(v for v in variant_of.values() if v is not None):
        owners = [n for n, v in variant_of.items() if v == variant]
        rows = []
        for r in (r for r in work if r["variant"] == variant):
            mark = [n for n in owners if str(models[n][0]) == r["bits"]]
            cell = r["bits"] + (" ◀ " + ", ".join(mark) if mark else "")
            rows.append([cell, r["payload_bytes"], *figures(r, base_by_key.get(key(r)))])
        label = rows and next(r["label"] for r in work if r["variant"] == variant)
        text.append(
            f"The format of the {' and '.join(owners)}, {label}, at each width "
            "(◀ marks the model's):\n\n" + table(["bits", "payload (B)", *header], rows)
        )
    return "\n\n".join(text)


# --- plots -----------------------------------------------------------------


def plot_images(root: Path, sha: str) -> list[tuple[str, str, dict]]:
    """(plot id, caption, Vega-Lite spec) to draw, from ``dvc plots diff``.

    A plot whose data is the same at base and in the workspace is drawn once. Where it
    changed, a template that colours by revision draws both in one image; any other is
    drawn twice, base and workspace, so that two sets of data never share one line.
    """
    shown = dvc_json(root, "plots", "diff", sha)
    if shown.get("errors"):
        raise UserError(f"'dvc plots diff {sha[:7]}' reported errors: {shown['errors']}")
    images = []
    for plot_id, entries in shown.get("data", {}).items():
        spec = entries[0]["content"]
        values = spec["data"]["values"]
        by_rev: dict[str, list] = {}
        for row in values:
            rest = {k: v for k, v in row.items() if k != "rev"}
            by_rev.setdefault(row.get("rev"), []).append(rest)
        base_rows, work_rows = by_rev.get(sha, []), by_rev.get(WORKSPACE, [])
        if base_rows == work_rows:
            only = [r for r in values if r.get("rev") == WORKSPACE] or values
            images.append((plot_id, "unchanged", _with_values(spec, only, sha)))
        elif '"field": "rev"' in json.dumps(spec):
            images.append((plot_id, "base and workspace", _with_values(spec, values, sha)))
        else:
            for rev, name in ((sha, "base"), (WORKSPACE, WORKSPACE)):
                rows = [r for r in values if r.get("rev") == rev]
                images.append((f"{plot_id}-{name}", name, _with_values(spec, rows, sha)))
    return images


def _with_values(spec: dict, values: list[dict], sha: str) -> dict:
    """The spec with these rows, the base's revision named by its short id."""
    short = sha[:7]
    rows = [r | {"rev": f"base {short}"} if r.get("rev") == sha else r for r in values]
    return spec | {"data": spec["data"] | {"values": rows}}


# --- the command -----------------------------------------------------------


def build(
    root: Path, base: str | None, out: Path, images_url: str | None = None
) -> tuple[Path, list[Path]]:
    """Write ``out``/report.md and its images; return the report and the images."""
    if importlib.util.find_spec("dvc") is None:
        raise UserError("the report needs dvc: run ./setup.sh (or pip install -r requirements.txt)")
    sha, chosen = resolve_base(root, base)
    short = sha[:7]
    head = git(root, "rev-parse", "--short", "HEAD").strip()
    dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no").strip())

    params = dvc_json(root, "params", "diff", sha)
    metrics = dvc_json(root, "metrics", "diff", sha, "--all")
    changed_metrics = any(
        v.get("old") != v.get("new") for m in metrics.values() for v in m.values()
    )
    base_rob = base_file(root, sha, ROBUSTNESS)
    work_path = root / ROBUSTNESS
    work_rob = work_path.read_text() if work_path.exists() else None
    quant = metrics.get(MODELS["quant"], {})
    models = {
        f"{rev} model": tuple(quant.get(m, {}).get(key) for m in ("bits", "payload_bytes"))
        for rev, key in (("base", "old"), (WORKSPACE, "new"))
    }
    images = plot_images(root, sha)
    nothing = not any(params.values()) and not changed_metrics and base_rob == work_rob
    nothing = nothing and all(caption == "unchanged" for _, caption, _ in images)

    where = f"`{head}`" + (" with uncommitted changes" if dirty else "")
    parts = ["# cali-reg report", f"Base: `{short}` ({chosen}). Workspace: {where}."]
    if nothing:
        parts.append(
            f"**Nothing changed**: the params, metrics and plots of the workspace are those "
            f"of `{short}`."
        )
    else:
        parts.append(summary(params, metrics))
    parts += [params_section(params), metrics_section(metrics)]
    parts.append(robustness_section(base_rob, work_rob, models))

    written = []
    if not nothing:
        plots = ["## Plots, base against workspace", f"Drawn from `dvc plots diff {short}`."]
        try:
            import vl_convert
        except ImportError:
            raise UserError(
                "the plots need vl-convert-python: pip install -r requirements-dev.txt"
            ) from None
        for name, caption, spec in images:
            path = out / f"{name}.png"
            atomic_write_bytes(path, vl_convert.vegalite_to_png(spec, scale=1.5))
            written.append(path)
            title = f"{name} ({caption})"
            if images_url:
                plots.append(f"- [{title}: {path.name}]({images_url})")
            else:
                plots.append(f"### {title}\n\n![{title}]({path.name})")
        if images_url:
            plots.insert(2, f"The images are in the build artifact: [{images_url}]({images_url})")
        parts += plots
    report = out / "report.md"
    atomic_write_text(report, "\n\n".join(parts) + "\n")
    return report, written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        metavar="REV",
        help="commit, branch or tag to compare with (default: the merge base with main)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT,
        metavar="DIR",
        help=f"folder for report.md and its images (default: {OUT})",
    )
    parser.add_argument(
        "--images-url",
        metavar="URL",
        help="link the images to URL instead of embedding them (a pull-request comment "
        "cannot show files of the machine that made them)",
    )


def main(args: argparse.Namespace) -> None:
    root = repo_root()
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    try:
        report, images = build(root, args.base, out, args.images_url)
    except OSError as err:
        raise UserError(f"cannot write the report to {args.out} ({err.strerror})") from None
    print_lines([str(path) for path in (report, *images)])
