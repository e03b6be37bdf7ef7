"""The restore command: the workspace back to the commit after experiments.

    cali-reg restore

``dvc exp run`` and ``dvc exp apply`` change ``params.yaml``, ``dvc.lock``,
``metrics/``, ``plots/`` and the DVC-tracked data and models. This command puts all of
them back as HEAD has them, and leaves every other file (your code) alone.

It compares file contents with HEAD's, not git's index: DVC rewrites git's index
through libgit2, which records file times to the nanosecond, while git compares whole
seconds. A same-size edit made in the same second as that write (``split.test_size``
1.5 for 0.2 in a failed ``dvc exp run``) then looks clean to ``git status``, and
``git checkout`` and ``git reset --hard`` skip the file (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from cali_reg.errors import UserError
from cali_reg.files import atomic_write_bytes

# What a pipeline run or an experiment writes among the files git tracks.
PIPELINE_FILES = ("params.yaml", "dvc.lock", "metrics", "plots")


def git(root: Path | str, *args: str, input: str | None = None) -> str:
    """Output of one git command in ``root``; a one-line UserError if it fails."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=root, input=input, capture_output=True, text=True, timeout=120
        )
    except FileNotFoundError:
        raise UserError("git is not installed; install git and run this in a clone") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"git {args[0]} failed in {root}: {detail}")
    return proc.stdout


def print_lines(lines: list[str]) -> None:
    """Print each line; a reader that stops early (``| head``) is not an error."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def repo_root(where: Path | str = ".") -> Path:
    """The top folder of the git repository holding ``where``."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True
        )
    except FileNotFoundError:
        raise UserError("git is not installed; install git and run this in a clone") from None
    if proc.returncode != 0:
        raise UserError(f"{Path(where).resolve()} is not in a git repository; run this in a clone")
    return Path(proc.stdout.strip())


def drift(root: Path, paths: tuple[str, ...] = PIPELINE_FILES) -> dict[str, str]:
    """Files under ``paths`` whose content differs from HEAD's, with HEAD's blob id.

    Hashes the files themselves (git hash-object), so a stale index cannot hide a change.
    """
    listed = git(root, "ls-tree", "-r", "-z", "HEAD", "--", *paths)
    committed = {}
    for record in filter(None, listed.split("\0")):
        meta, path = record.split("\t", 1)
        committed[path] = meta.split()[2]
    present = [p for p in committed if (root / p).is_file()]
    hashed = git(root, "hash-object", "--no-filters", "--stdin-paths", input="\n".join(present))
    current = dict(zip(present, hashed.split(), strict=True))
    return {p: oid for p, oid in committed.items() if current.get(p) != oid}


def restore_files(root: Path) -> list[str]:
    """Write HEAD's version of each drifted pipeline file; return the files written."""
    changed = drift(root)
    for path, oid in sorted(changed.items()):
        data = subprocess.run(
            ["git", "cat-file", "blob", oid], cwd=root, capture_output=True, check=True
        ).stdout
        atomic_write_bytes(root / path, data)
    # Unstage anything staged there, then let git re-read the files' times.
    git(root, "reset", "-q", "HEAD", "--", *PIPELINE_FILES)
    subprocess.run(["git", "update-index", "-q", "--refresh"], cwd=root, capture_output=True)
    return sorted(changed)


def checkout_outputs(root: Path) -> list[str]:
    """``dvc checkout --force``: data and models as the restored dvc.lock says; its lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "checkout", "--force"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        if "No module named dvc" in proc.stderr:
            raise UserError("dvc is not installed here; run ./setup.sh (or pip install dvc)")
        lines = proc.stderr.strip().splitlines()
        if lines and "Checkout failed for following targets" in lines[0]:
            missing = [x for x in lines[1:] if "/" in x and " " not in x and x[0] != "<"]
            raise UserError(
                f"{len(missing)} committed output(s) are not in DVC's cache "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                "run 'dvc pull' (or 'dvc repro'), then run this again"
            )
        detail = next((x for x in lines if x.startswith("ERROR")), "no message")
        raise UserError(f"dvc checkout failed: {detail.removeprefix('ERROR: ')}")
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _pipeline_file(path: str) -> bool:
    return any(path == top or path.startswith(top + "/") for top in PIPELINE_FILES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the target is always the commit checked out (HEAD)."""


def main(args: argparse.Namespace) -> None:
    root = repo_root()
    head = git(root, "rev-parse", "--short", "HEAD").strip()
    written = restore_files(root)
    print_lines([f"restored {path}" for path in written])
    checked_out = checkout_outputs(root)
    lines = list(checked_out)
    if not written and not checked_out:
        lines.append(
            f"nothing to restore: params, dvc.lock, metrics, plots and DVC outputs are as {head}"
        )
    others = [p for p in drift(root, (".",)) if not _pipeline_file(p)]
    if others:
        lines.append(f"left as they are (not written by the pipeline): {', '.join(sorted(others))}")
    print_lines(lines)
