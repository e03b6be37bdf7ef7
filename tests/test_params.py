"""Param validation: every bad value, key or section is one line naming it."""

from pathlib import Path

import pytest
import yaml

from cali_reg.errors import UserError
from cali_reg.params import load_param, load_params, read_params, validate_section
from stages.quantize import RULES as QUANTIZE_RULES
from stages.robustness import RULES as ROBUSTNESS_RULES
from stages.split import RULES as SPLIT_RULES

GOOD = {
    "split": {"test_size": 0.2, "seed": 42},
    "quantize": {
        "scheme": "window",
        "bits": 8,
        "margin": 0.001,
        "padding": 0.05,
        "half_width": 0.05,
        "refit_intercept": True,
        "rounding": "nearest",
    },
}


def with_value(section, key, value):
    params = {s: dict(v) for s, v in GOOD.items()}
    params[section][key] = value
    return params


def test_good_params_pass():
    assert validate_section(GOOD, "split", SPLIT_RULES) == GOOD["split"]
    assert validate_section(GOOD, "quantize", QUANTIZE_RULES) == GOOD["quantize"]
    auto = with_value("quantize", "bits", "auto")
    assert validate_section(auto, "quantize", QUANTIZE_RULES)["bits"] == "auto"


def test_the_committed_params_pass_every_stage_rule():
    params = yaml.safe_load(Path("params.yaml").read_text())
    validate_section(params, "quantize", QUANTIZE_RULES)
    validate_section(params, "robustness", ROBUSTNESS_RULES)
    # robustness reads the split's test_size, not a copy of its own
    assert "test_size" not in params["robustness"]


@pytest.mark.parametrize(
    "section,rules,key,value,allowed",
    [
        ("split", SPLIT_RULES, "test_size", 0.0, "strictly between 0 and 1"),
        ("split", SPLIT_RULES, "test_size", 1, "strictly between 0 and 1"),
        ("split", SPLIT_RULES, "test_size", float("nan"), "strictly between 0 and 1"),
        ("split", SPLIT_RULES, "test_size", True, "strictly between 0 and 1"),
        ("split", SPLIT_RULES, "seed", -1, "an integer from 0"),
        ("split", SPLIT_RULES, "seed", 4.2, "an integer from 0"),
        ("quantize", QUANTIZE_RULES, "bits", 1, "auto or an integer from 2 to 16"),
        ("quantize", QUANTIZE_RULES, "bits", 17, "auto or an integer from 2 to 16"),
        ("quantize", QUANTIZE_RULES, "bits", True, "auto or an integer from 2 to 16"),
        ("quantize", QUANTIZE_RULES, "bits", "Auto", "auto or an integer from 2 to 16"),
        ("quantize", QUANTIZE_RULES, "padding", 0, "a number above 0"),
        ("quantize", QUANTIZE_RULES, "half_width", -0.05, "a number above 0"),
        ("quantize", QUANTIZE_RULES, "half_width", float("inf"), "a number above 0"),
        ("quantize", QUANTIZE_RULES, "margin", -0.1, "a number of at least 0"),
        ("quantize", QUANTIZE_RULES, "margin", "0.1", "a number of at least 0"),
        ("quantize", QUANTIZE_RULES, "scheme", "Window", "one of auto, window, affine, pow2, e3"),
        ("quantize", QUANTIZE_RULES, "refit_intercept", "yes", "true or false"),
        ("quantize", QUANTIZE_RULES, "refit_intercept", 1, "true or false"),
        ("quantize", QUANTIZE_RULES, "rounding", "floor", "one of nearest, error_aware, optimal"),
    ],
)
def test_bad_values_name_key_and_allowed(section, rules, key, value, allowed):
    with pytest.raises(UserError) as info:
        validate_section(with_value(section, key, value), section, rules)
    assert f"{section}.{key}" in str(info.value) and allowed in str(info.value)


def test_missing_and_unknown_keys_and_sections():
    params = {"quantize": {"scheme": "window", "bits": 8}}
    with pytest.raises(UserError, match=r"quantize\.margin is missing"):
        validate_section(params, "quantize", QUANTIZE_RULES)
    params = with_value("quantize", "bitz", 4)
    with pytest.raises(UserError, match=r"unknown key quantize\.bitz"):
        validate_section(params, "quantize", QUANTIZE_RULES)
    with pytest.raises(UserError, match="section 'split' is missing"):
        validate_section({}, "split", SPLIT_RULES)


def test_load_params_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params("split", SPLIT_RULES, path)


def test_read_params_gives_a_section_as_it_stands_for_a_reporting_stage(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("quantize:\n  scheme: pow2\n  new_key: 3\n")
    assert read_params("quantize", path) == {"scheme": "pow2", "new_key": 3}
    with pytest.raises(UserError, match="section 'split' is missing"):
        read_params("split", path)
    path.write_text("split: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_params("split", path)


def test_load_param_checks_only_its_key_by_the_sections_rule(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split:\n  test_size: 0.25\n  seed: -1\n  extra: 1\n")
    # the other keys are the split stage's to check: not read, not refused here
    assert load_param("split", "test_size", SPLIT_RULES, path) == 0.25
    path.write_text("split:\n  test_size: 1.5\n  seed: 42\n")
    with pytest.raises(UserError, match=r"split\.test_size = 1\.5 is not allowed; use a number"):
        load_param("split", "test_size", SPLIT_RULES, path)
    for text in ("split:\n  seed: 42\n", "quantize: {}\n"):
        path.write_text(text)
        with pytest.raises(UserError, match=r"split\.test_size is missing; set it to a number"):
            load_param("split", "test_size", SPLIT_RULES, path)
