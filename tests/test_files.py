"""Atomic writes: a failed write leaves the old file and no temp file."""

import pytest

from cali_reg import files


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    files.atomic_write_text(path, "good\n")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        files.atomic_write_text(path, "new\n")
    assert path.read_text() == "good\n"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
