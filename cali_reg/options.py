"""What the commands share on their command lines: where the model is, and the checks.

``--model`` names a model file or one of the project's two (``quant``, ``float``);
``--strict-columns`` and ``--strict-range`` make the input checks refuse what they
otherwise let through. Standard library only: ``cali-reg predict`` imports this.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cali_reg.errors import UserError

SHORTHANDS = {"quant": "models/quant.json", "float": "models/float.json"}
# The artifact names of the model files in dvc.yaml (tests/test_options.py keeps them
# equal): the model's name in the Open Inference Protocol's URLs and in /metrics.
ARTIFACTS = {"quant.json": "quant-model", "float.json": "float-model"}


def project_root() -> Path | None:
    """$CALI_REG_HOME, else the nearest folder from here up that holds dvc.yaml."""
    home = os.environ.get("CALI_REG_HOME")
    if home:
        return Path(home)
    here = Path.cwd()
    root = next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file()), None)
    return None if root is None else Path(os.path.relpath(root))  # short paths in messages


def in_project(rel: str, why: str) -> Path:
    """``rel`` inside the project; UserError outside one."""
    root = project_root()
    if root is None:
        raise UserError(
            f"{why} needs the cali-reg project's {rel}, and this is not inside the project "
            "(no dvc.yaml here or above, and CALI_REG_HOME is not set)"
        )
    return root / rel


def model_path(model: str | None) -> Path:
    """The file of ``--model``: a path, or the shorthand quant/float inside the project."""
    if model is None:
        try:
            return in_project(SHORTHANDS["quant"], "the default model")
        except UserError as err:
            raise UserError(f"{err}; give --model PATH") from None
    if model in SHORTHANDS:
        return in_project(SHORTHANDS[model], f"--model {model}")
    if not Path(model).exists():
        raise UserError(
            f"--model {model}: no such file; give the path of a model file, or quant or float"
        )
    return Path(model)


def model_name(path: Path) -> str:
    """The model's artifact name in dvc.yaml (quant-model, float-model), else the file's stem."""
    return ARTIFACTS.get(path.name, path.stem)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model``, as the predict and serve commands both take it (see ``model_path``)."""
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="model file (quantised or float JSON); 'quant' or 'float' mean models/quant.json "
        "or models/float.json of the project (default: quant)",
    )


def add_strict_arguments(parser: argparse.ArgumentParser) -> None:
    """``--strict-columns`` and ``--strict-range``, as predict and serve both take them."""
    parser.add_argument(
        "--strict-columns",
        action="store_true",
        help="refuse columns (keys) that are not the model's features, instead of ignoring them",
    )
    parser.add_argument(
        "--strict-range",
        action="store_true",
        help="refuse a row with a value outside the model's training range, naming row, "
        "column and range (by default such rows are predicted, and counted by serve)",
    )


def check_id_column(id_column: str | None, features) -> None:
    """UserError for an ``--id-column`` that is blank or one of the model's features."""
    if id_column is not None and (not id_column.strip() or id_column in features):
        raise UserError(f"--id-column {id_column!r}: name a column that is not one of the features")
