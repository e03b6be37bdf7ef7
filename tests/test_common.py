"""Unit tests of param validation and the file helpers."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages import common
from stages.quantize import RULES as QUANTIZE_RULES
from stages.split import RULES as SPLIT_RULES
from tests.conftest import ROOT

GOOD = {"split": {"test_size": 0.2, "seed": 42},
        "quantize": {"scheme": "window", "bits": 8, "margin": 0.05, "refit_intercept": True,
                     "rounding": "nearest"}}


def with_value(section, key, value):
    params = {s: dict(v) for s, v in GOOD.items()}
    params[section][key] = value
    return params


def test_good_params_pass():
    assert common.validate_section(GOOD, "split", SPLIT_RULES) == GOOD["split"]
    assert common.validate_section(GOOD, "quantize", QUANTIZE_RULES) == GOOD["quantize"]


@pytest.mark.parametrize("section,rules,key,value,allowed", [
    ("split", SPLIT_RULES, "test_size", 0.0, "strictly between 0 and 1"),
    ("split", SPLIT_RULES, "test_size", 1, "strictly between 0 and 1"),
    ("split", SPLIT_RULES, "test_size", float("nan"), "strictly between 0 and 1"),
    ("split", SPLIT_RULES, "test_size", True, "strictly between 0 and 1"),
    ("split", SPLIT_RULES, "seed", -1, "an integer from 0"),
    ("split", SPLIT_RULES, "seed", 4.2, "an integer from 0"),
    ("quantize", QUANTIZE_RULES, "bits", 1, "an integer from 2 to 16"),
    ("quantize", QUANTIZE_RULES, "bits", 17, "an integer from 2 to 16"),
    ("quantize", QUANTIZE_RULES, "bits", True, "an integer from 2 to 16"),
    ("quantize", QUANTIZE_RULES, "margin", 0, "a number greater than 0"),
    ("quantize", QUANTIZE_RULES, "margin", "0.1", "a number greater than 0"),
    ("quantize", QUANTIZE_RULES, "scheme", "Window", "one of window, affine, pow2"),
    ("quantize", QUANTIZE_RULES, "refit_intercept", "yes", "true or false"),
    ("quantize", QUANTIZE_RULES, "refit_intercept", 1, "true or false"),
    ("quantize", QUANTIZE_RULES, "rounding", "floor", "one of nearest, error_aware"),
])
def test_bad_values_name_key_and_allowed(section, rules, key, value, allowed):
    with pytest.raises(common.UserError) as info:
        common.validate_section(with_value(section, key, value), section, rules)
    assert f"{section}.{key}" in str(info.value) and allowed in str(info.value)


def test_missing_and_unknown_keys_and_sections():
    params = {"quantize": {"scheme": "window", "bits": 8}}
    with pytest.raises(common.UserError, match="quantize.margin is missing"):
        common.validate_section(params, "quantize", QUANTIZE_RULES)
    params = with_value("quantize", "bitz", 4)
    with pytest.raises(common.UserError, match="unknown key quantize.bitz"):
        common.validate_section(params, "quantize", QUANTIZE_RULES)
    with pytest.raises(common.UserError, match="section 'split' is missing"):
        common.validate_section({}, "split", SPLIT_RULES)


def test_load_params_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split: [unclosed\n")
    with pytest.raises(common.UserError, match="not valid YAML"):
        common.load_params("split", SPLIT_RULES, path)


def test_table_round_trip_is_bit_exact(tmp_path):
    table = np.random.default_rng(0).normal(size=(20, 3)) * 1e3
    common.write_table(tmp_path / "t.csv", ("a", "b", "c"), table)
    np.testing.assert_array_equal(common.read_table(tmp_path / "t.csv", ("a", "b", "c")), table)


def test_table_rows_keep_python_ints_as_integers(tmp_path):
    common.write_table(tmp_path / "t.csv", ("n", "x"), [[2, 0.1], [16, 3.0]])
    assert (tmp_path / "t.csv").read_text() == "n,x\n2,0.1\n16,3.0\n"
    np.testing.assert_array_equal(common.read_table(tmp_path / "t.csv", ("n", "x")),
                                  [[2, 0.1], [16, 3.0]])


@pytest.mark.parametrize("content,message", [
    ("a,b\n1,2\n", "header is 'a,b'"),
    ("a,b,c\n1,2,x\n", "could not convert"),
    ("a,b,c\n1,2,nan\n", "row 1 column c is not a finite number"),
    ("a,b,c\n", "has no rows"),
])
def test_read_table_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(common.UserError, match=message):
        common.read_table(path, ("a", "b", "c"))


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    common.atomic_write_text(path, "good\n")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "replace", boom)
    with pytest.raises(OSError):
        common.atomic_write_text(path, "new\n")
    assert path.read_text() == "good\n"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_read_table_checks_row_count(tmp_path):
    path = tmp_path / "t.csv"
    common.write_table(path, ("a", "b"), np.ones((3, 2)))
    assert common.read_table(path, ("a", "b"), rows=3).shape == (3, 2)
    with pytest.raises(common.UserError, match=r"t.csv has 3 rows, expected 4; re-run"):
        common.read_table(path, ("a", "b"), rows=4)


@settings(max_examples=200, deadline=None)
@given(n_rows=st.integers(2, 50_000), test_size=st.floats(0.0005, 0.9995))
def test_split_rows_are_the_sizes_train_test_split_makes(n_rows, test_size):
    from sklearn.model_selection import train_test_split

    rows = common.split_rows(test_size, n_rows)
    assert rows["all"] == n_rows and rows["train"] + rows["test"] == n_rows
    try:
        train, test = train_test_split(np.arange(n_rows), test_size=test_size, random_state=0)
    except ValueError:  # scikit-learn refuses a split that leaves a part empty
        assert 0 in (rows["train"], rows["test"])
        return
    assert (len(train), len(test)) == (rows["train"], rows["test"])


def test_table_is_written_in_pieces_that_join_into_one_csv(tmp_path):
    table = np.random.default_rng(1).normal(size=(45, 3))
    pieces = list(common.format_csv(("a", "b", "c"), table, chunk_rows=7))
    assert len(pieces) == 1 + 7  # the header, then ceil(45 / 7) pieces of rows
    lines = "".join(pieces).splitlines()
    assert lines[0] == "a,b,c"
    assert [[float(v) for v in line.split(",")] for line in lines[1:]] == table.tolist()
    big = np.random.default_rng(2).normal(size=(45_000, 2))  # more rows than one piece
    common.write_table(tmp_path / "big.csv", ("a", "b"), big)
    np.testing.assert_array_equal(common.read_table(tmp_path / "big.csv", ("a", "b")), big)


KILLED_WRITER = """
import sys
import numpy as np
from stages import common
table = np.random.default_rng(int(sys.argv[2])).normal(size=(int(sys.argv[3]), 9))
common.write_table(sys.argv[1], common.COLUMNS, table)
"""


def test_writer_killed_at_any_moment_leaves_old_or_new_file_whole(tmp_path):
    path, n_rows = tmp_path / "table.csv", 150_000
    args = [sys.executable, "-c", KILLED_WRITER, str(path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run(args + ["1", str(n_rows)], env=env, check=True)
    duration = time.perf_counter() - start
    new = path.read_bytes()
    subprocess.run(args + ["0", "100"], env=env, check=True)  # a small, different old file
    old = path.read_bytes()

    interrupted = 0
    for fraction in np.linspace(0.15, 0.95, 8):
        proc = subprocess.Popen(args + ["1", str(n_rows)], env=env)
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert path.read_bytes() in (old, new), f"half-written file after a kill at {fraction:.0%}"
        strays = [p for p in tmp_path.iterdir() if p != path]
        interrupted += bool(strays)
        for stray in strays:  # what a killed writer leaves: a hidden temp file beside it
            assert stray.name.startswith(".table.csv.") and stray.name.endswith(".tmp")
            stray.unlink()
        path.write_bytes(old)
    assert interrupted >= 1, "no kill landed mid-write; the test proved nothing"
