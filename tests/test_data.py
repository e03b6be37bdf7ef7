"""The data tables: exact round trips, streamed writes, and refusals of bad files."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cali_reg.data import format_csv, read_table, write_table
from cali_reg.errors import UserError
from tests.helpers import ROOT


def test_table_round_trip_is_bit_exact(tmp_path):
    table = np.random.default_rng(0).normal(size=(20, 3)) * 1e3
    write_table(tmp_path / "t.csv", ("a", "b", "c"), table)
    np.testing.assert_array_equal(read_table(tmp_path / "t.csv", ("a", "b", "c")), table)


def test_table_rows_keep_python_ints_as_integers(tmp_path):
    write_table(tmp_path / "t.csv", ("n", "x"), [[2, 0.1], [16, 3.0]])
    assert (tmp_path / "t.csv").read_text() == "n,x\n2,0.1\n16,3.0\n"
    np.testing.assert_array_equal(read_table(tmp_path / "t.csv", ("n", "x")), [[2, 0.1], [16, 3.0]])


@pytest.mark.parametrize(
    "content,message",
    [
        ("a,b\n1,2\n", "header is 'a,b'"),
        ("a,b,c\n1,2,x\n", "could not convert"),
        ("a,b,c\n1,2,nan\n", "row 1 column c is not a finite number"),
        ("a,b,c\n", "has no rows"),
    ],
)
def test_read_table_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_table(path, ("a", "b", "c"))


def test_table_is_written_in_pieces_that_join_into_one_csv(tmp_path):
    table = np.random.default_rng(1).normal(size=(45, 3))
    pieces = list(format_csv(("a", "b", "c"), table, chunk_rows=7))
    assert len(pieces) == 1 + 7  # the header, then ceil(45 / 7) pieces of rows
    lines = "".join(pieces).splitlines()
    assert lines[0] == "a,b,c"
    assert [[float(v) for v in line.split(",")] for line in lines[1:]] == table.tolist()
    big = np.random.default_rng(2).normal(size=(45_000, 2))  # more rows than one piece
    write_table(tmp_path / "big.csv", ("a", "b"), big)
    np.testing.assert_array_equal(read_table(tmp_path / "big.csv", ("a", "b")), big)


KILLED_WRITER = """
import sys
import numpy as np
from cali_reg.data import COLUMNS, write_table
table = np.random.default_rng(int(sys.argv[2])).normal(size=(int(sys.argv[3]), 9))
write_table(sys.argv[1], COLUMNS, table)
"""


def test_writer_killed_at_any_moment_leaves_old_or_new_file_whole(tmp_path):
    path, n_rows = tmp_path / "table.csv", 150_000
    args = [sys.executable, "-c", KILLED_WRITER, str(path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run([*args, "1", str(n_rows)], env=env, check=True)
    duration = time.perf_counter() - start
    new = path.read_bytes()
    subprocess.run([*args, "0", "100"], env=env, check=True)  # a small, different old file
    old = path.read_bytes()

    interrupted = 0
    for fraction in np.linspace(0.15, 0.95, 8):
        proc = subprocess.Popen([*args, "1", str(n_rows)], env=env)
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
