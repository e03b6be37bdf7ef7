"""Experiments the DVC way: a queued grid run in parallel, and the way back to the commit."""

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    call_stage,
    copy_built,
    copy_project,
    dvc,
    read_json,
    run_queue,
    set_params,
    sh,
)

METRICS = ("metrics/float.json", "metrics/quant.json", "metrics/compare.json")
# What DVC keeps for itself: its cache, and the queue's temp copies and logs.
INTERNAL = (".git", ".dvc/cache", ".dvc/tmp")


def file_hashes(repo: Path) -> dict[str, str]:
    """SHA-256 of every file of the workspace outside git's and DVC's own folders."""
    found = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_file() and not rel.startswith(INTERNAL) and "__pycache__" not in rel:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def differs_from_head(repo: Path) -> list[str]:
    """Tracked files whose bytes differ from HEAD's, read without trusting git's index."""
    tracked = sh(["git", "ls-files", "-z"], repo).stdout.split("\0")
    differ = []
    for rel in filter(None, tracked):
        committed = subprocess.run(
            ["git", "cat-file", "blob", f"HEAD:{rel}"], cwd=repo, capture_output=True, check=True
        ).stdout
        path = repo / rel
        if not path.is_file() or path.read_bytes() != committed:
            differ.append(rel)
    return differ


def queue_and_run(repo: Path, *sets: str, jobs: int = 2, timeout: float = 600) -> dict:
    """Queue ``dvc exp run --queue -S ...``, run the queue; {name: (overrides, status)}."""
    args = [a for s in sets for a in ("-S", s)]
    out = dvc("exp", "run", "--queue", *args, cwd=repo).stdout
    queued = {
        name: tuple(ast.literal_eval(overrides)["params.yaml"])
        for overrides, name in re.findall(
            r"Queueing with overrides '(\{.*?\})'\.\nQueued experiment '([^']+)'", out
        )
    }
    status = run_queue(repo, jobs, timeout)
    states = {line.split()[1]: line.split()[-1] for line in status.splitlines()[1:] if line.split()}
    return {name: (overrides, states.get(name)) for name, overrides in queued.items()}


def experiment_metrics(repo: Path) -> dict[str, dict]:
    """Each experiment's metrics files from ``dvc exp show --json``, by name."""
    import json

    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                metrics = rev["data"].get("metrics") or {}
                found[rev["name"]] = {path: m["data"] for path, m in metrics.items()}
    return found


@pytest.mark.slow
def test_a_queued_grid_runs_two_at_a_time_and_leaves_the_workspace_as_committed(
    built_repo, repo, tmp_path
):
    before = file_hashes(repo)
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""
    assert differs_from_head(repo) == []

    # DVC's sweep syntax: 2 schemes x 2 margins, one margin not allowed (-1). Queued in
    # that order and run two at a time, each bad entry runs beside a good one.
    grid = queue_and_run(repo, "quantize.scheme=pow2,affine", "quantize.margin=0.005,-1", jobs=2)
    assert len(grid) == 4, grid
    good = {n: o for n, (o, s) in grid.items() if "quantize.margin=-1" not in o}
    bad = {n: o for n, (o, s) in grid.items() if "quantize.margin=-1" in o}
    assert {grid[n][1] for n in good} == {"Success"}, grid
    assert {grid[n][1] for n in bad} == {"Failed"}, grid

    # A bad entry fails alone, with the quantize stage's one-line message.
    for name in bad:
        log = dvc("queue", "logs", name, cwd=repo).stdout
        errors = [line for line in log.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, log
        assert errors[0].startswith("error: params.yaml: quantize.margin = -1 is not allowed")
        assert "Traceback" not in log

    # Each experiment's metrics are those of the same settings run alone in another copy:
    # its params set, and the two stages they change (quantize, evaluate) called in turn.
    found = experiment_metrics(repo)
    alone = tmp_path / "alone"
    copy_built(built_repo, alone)
    for name, overrides in good.items():
        shutil.copy2(built_repo / "params.yaml", alone / "params.yaml")
        for override in overrides:
            key, value = override.split("=", 1)
            section, param = key.split(".")
            set_params(alone, **{section: {param: yaml.safe_load(value)}})
        for stage in ("quantize", "evaluate"):
            assert call_stage(stage, alone).returncode == 0, (name, stage)
        expected = {path: read_json(alone / path) for path in METRICS}
        assert {p: found[name][p] for p in METRICS} == expected, (name, overrides)
        settings = yaml.safe_load((alone / "params.yaml").read_text())["quantize"]
        assert f"quantize.scheme={settings['scheme']}" in overrides
    distinct = {str(found[n]["metrics/quant.json"]) for n in good}
    assert len(distinct) == len(good) == 2  # so that swapped or repeated results would show

    # The workspace is byte for byte as committed, and git says so too.
    assert file_hashes(repo) == before
    assert differs_from_head(repo) == []
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""


# --- back to the commit -----------------------------------------------------


def restore(repo: Path) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "cali_reg", "restore"], repo)


def stale_index_entry(repo: Path, rel: str) -> None:
    """Record ``rel``'s current stat in git's index against HEAD's blob, as DVC can leave it.

    DVC rewrites the index through libgit2, which judges "racily clean" entries to the
    nanosecond; git compares whole seconds. After a same-size edit in the same second, the
    index holds the old blob with the new file's times, and git trusts it.
    """
    from dulwich.index import Index

    time.sleep(1.1)  # the index written a second after the file: not racy in git's eyes
    index_path = Path(sh(["git", "rev-parse", "--git-path", "index"], repo).stdout.strip())
    index = Index(repo / index_path if not index_path.is_absolute() else index_path)
    st = (repo / rel).stat()
    entry = index[rel.encode()]
    entry.ctime, entry.mtime = (
        (int(st.st_ctime), st.st_ctime_ns % 10**9),
        (
            int(st.st_mtime),
            st.st_mtime_ns % 10**9,
        ),
    )
    entry.dev, entry.ino, entry.size = st.st_dev, st.st_ino, st.st_size
    index[rel.encode()] = entry
    index.write()


def test_restore_sees_through_a_stale_index_that_git_checkout_and_reset_trust(repo):
    params = repo / "params.yaml"
    committed = params.read_bytes()
    params.write_bytes(committed.replace(b"test_size: 0.2 ", b"test_size: 1.5 ", 1))
    stale_index_entry(repo, "params.yaml")
    # The symptom: git sees nothing, and its own commands restore nothing.
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""
    sh(["git", "checkout", "--", "params.yaml"], repo)
    sh(["git", "reset", "-q", "--hard"], repo)
    assert b"test_size: 1.5" in params.read_bytes()

    out = restore(repo).stdout
    assert "restored params.yaml" in out
    assert params.read_bytes() == committed
    assert differs_from_head(repo) == []
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""


@pytest.mark.slow
def test_restore_after_an_applied_experiment_and_a_failed_one(repo, built_repo):
    before = file_hashes(repo)
    dvc("exp", "run", "-S", "quantize.margin=0.01", cwd=repo)
    assert read_json(repo / "metrics/quant.json") != read_json(built_repo / "metrics/quant.json")
    failed = dvc("exp", "run", "-S", "split.test_size=1.5", cwd=repo, check=False)
    assert failed.returncode != 0
    assert "split.test_size = 1.5 is not allowed" in failed.stderr

    out = restore(repo).stdout
    for rel in ("params.yaml", "dvc.lock", "metrics/quant.json", "models/quant.json"):
        assert rel in out
    assert file_hashes(repo) == before  # params, dvc.lock, metrics, plots, data and models
    assert differs_from_head(repo) == []
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""
    assert "up to date" in dvc("status", cwd=repo).stdout
    assert "nothing to restore" in restore(repo).stdout


def test_restore_leaves_code_alone_and_says_so(repo):
    edited = repo / "cali_reg" / "evaluate.py"
    text = edited.read_text() + "\n# a local edit\n"
    edited.write_text(text)
    out = restore(repo).stdout
    assert "nothing to restore" in out
    assert "left as they are (not written by the pipeline): cali_reg/evaluate.py" in out
    assert edited.read_text() == text


def test_restore_outside_a_git_repository_is_one_line(tmp_path):
    proc = sh([sys.executable, "-m", "cali_reg", "restore"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "is not in a git repository" in proc.stderr


def test_restore_without_the_models_in_the_cache_says_to_pull_them(tmp_path):
    clone = copy_project(tmp_path)  # the committed files, never reproduced: an empty cache
    proc = sh([sys.executable, "-m", "cali_reg", "restore"], clone, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "committed output(s) are not in DVC's cache" in proc.stderr
    assert "models/quant.json" in proc.stderr or "..." in proc.stderr
    assert "run 'dvc pull'" in proc.stderr
