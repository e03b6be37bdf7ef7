"""The plots command: DVC's plots rendered offline to static images for the docs.

    cali-reg plots [--out docs/plots] [--scale 2]

Each image is made from the Vega-Lite spec that ``dvc plots show --json`` fills in,
so the picture in the docs is the one DVC draws. vl-convert renders it with no
browser and no network. Fonts differ between machines, so the images are not
byte-for-byte reproducible and stay out of the pipeline and its gate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cali_reg.errors import UserError
from cali_reg.files import atomic_write_bytes

OUT = Path("docs/plots")


def dvc_specs(project: Path | str = ".") -> dict[str, dict]:
    """The filled-in Vega-Lite spec of every plot in dvc.yaml, by plot id."""
    cmd = [sys.executable, "-m", "dvc", "plots", "show", "--json"]
    try:
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise UserError(f"{project}: no such folder") from None
    shown = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
    if not shown.get("data") or shown.get("errors"):
        detail = (proc.stderr.strip().splitlines() or ["no plots"])[-1]
        raise UserError(
            f"'dvc plots show' failed in {project} ({detail}); run 'dvc repro' there first"
        )
    return {plot_id: revs[0]["content"] for plot_id, revs in shown["data"].items()}


def render_png(spec: dict, scale: float = 2.0) -> bytes:
    """A PNG of one Vega-Lite spec, drawn offline."""
    import vl_convert

    return vl_convert.vegalite_to_png(spec, scale=scale)


def render_all(project: Path | str = ".", out: Path | str = OUT, scale: float = 2.0) -> list[Path]:
    """Render every DVC plot of ``project`` to ``out``/<plot id>.png; return the files."""
    written = []
    for plot_id, spec in dvc_specs(project).items():
        path = Path(project) / out / f"{plot_id}.png"
        atomic_write_bytes(path, render_png(spec, scale))
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"folder for the images (default: {OUT})"
    )
    parser.add_argument(
        "--scale", type=_scale, default=2.0, help="pixels per CSS pixel, 0.5 to 8 (default: 2)"
    )


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.5 <= value <= 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scale from 0.5 to 8")
    return value


def main(args: argparse.Namespace) -> None:
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        raise UserError(
            "rendering needs vl-convert-python: pip install -r requirements-dev.txt"
        ) from None
    try:
        for path in render_all(".", args.out, args.scale):
            print(path)
    except OSError as err:
        raise UserError(f"cannot write the images to {args.out} ({err.strerror})") from None
