"""Checking params.yaml: each stage declares its section's rules and reads it through here.

A bad section stops the stage before it does any work, with one line naming the
key and what it allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cali_reg.errors import UserError

PARAMS_FILE = Path("params.yaml")


class Rule(NamedTuple):
    """One param: a type and range check, and the words that say what it allows."""

    check: Callable[[object], bool]
    allowed: str


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def int_in(lo: int, hi: int) -> Rule:
    return Rule(lambda v: _is_int(v) and lo <= v <= hi, f"an integer from {lo} to {hi}")


def number_open(lo: float, hi: float) -> Rule:
    return Rule(
        lambda v: _is_number(v) and lo < v < hi, f"a number strictly between {lo:g} and {hi:g}"
    )


def number_above(lo: float) -> Rule:
    return Rule(lambda v: _is_number(v) and v > lo, f"a number above {lo:g}")


def auto_or_int_in(lo: int, hi: int) -> Rule:
    return Rule(
        lambda v: v == "auto" or (_is_int(v) and lo <= v <= hi),
        f"auto or an integer from {lo} to {hi}",
    )


def number_at_least(lo: float) -> Rule:
    return Rule(lambda v: _is_number(v) and v >= lo, f"a number of at least {lo:g}")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in choices, "one of " + ", ".join(choices))


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def validate_section(params: object, section: str, rules: dict[str, Rule]) -> dict:
    """Return ``params[section]`` after checking every key against ``rules``.

    Raises UserError naming the first bad key and what it allows: a missing key,
    an unknown key (usually a typo), or a value of the wrong type or range.
    """
    where = str(PARAMS_FILE)
    values = params.get(section) if isinstance(params, dict) else None
    if not isinstance(values, dict):
        raise UserError(
            f"{where}: section '{section}' is missing; it needs keys " + ", ".join(rules)
        )
    for key, rule in rules.items():
        if key not in values:
            raise UserError(f"{where}: {section}.{key} is missing; set it to {rule.allowed}")
        if not rule.check(values[key]):
            raise UserError(
                f"{where}: {section}.{key} = {values[key]!r} is not allowed; use {rule.allowed}"
            )
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise UserError(
            f"{where}: unknown key {section}.{unknown[0]}; allowed keys are " + ", ".join(rules)
        )
    return dict(values)


def _read(path: Path) -> object:
    import yaml  # only the stages need it, not the predictor

    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"{path} is not valid YAML{at}: fix its syntax") from None


def load_params(section: str, rules: dict[str, Rule], path: Path | str = PARAMS_FILE) -> dict:
    """Read ``path`` and return one validated section of it."""
    path = Path(path)
    return validate_section(_read(path), section, rules)


def load_param(section: str, key: str, rules: dict[str, Rule], path: Path | str = PARAMS_FILE):
    """Read ``path`` and return one key of a section, checked by ``rules[key]``.

    For a stage that reads one key of another stage's section: it declares only
    ``section.key`` in dvc.yaml, so that changing the section's other keys does not
    re-run it.
    """
    params = _read(Path(path))
    values = params.get(section) if isinstance(params, dict) else None
    one = {key: values[key]} if isinstance(values, dict) and key in values else {}
    return validate_section({section: one}, section, {key: rules[key]})[key]


def read_params(section: str, path: Path | str = PARAMS_FILE) -> dict:
    """One section of ``path`` as it stands, for a stage that reports another stage's params.

    Not checked here: the stage that owns the section checks it, and a reporting stage
    depends on that stage's outputs, so DVC runs the owner first and stops if it fails.
    """
    path = Path(path)
    params = _read(path)
    values = params.get(section) if isinstance(params, dict) else None
    if not isinstance(values, dict):
        raise UserError(f"{path}: section '{section}' is missing; restore it from git")
    return dict(values)


# The split section's rules: the split stage's, and the robustness stage reads
# split.test_size through them too (load_param).
SPLIT_RULES = {"test_size": number_open(0, 1), "seed": int_in(0, 2**32 - 1)}
