"""Fixtures: a throw-away copy of the project in which the real pipeline runs.

The helpers they use, and that tests import, are in tests/helpers/.
"""

import os
from pathlib import Path

import pytest

from tests.helpers import copy_built, shared_build

# The BLAS threads of numpy (OpenBLAS here) spin on their cores after each call; on a
# small machine running two test workers they take the CPU that the other worker's
# processes need. The pipeline's outputs are the same with one thread (CI's gate runs the
# pipeline with the default), and every process the tests start inherits this.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject.toml): one and a half workers per core, at least two.

    About a third of the suite's time is spent waiting on DVC's queue, the S3 server,
    podman and servers shutting down: a third worker on two cores fills it (measured in
    docs/tests.md: 205 s against 279 s with two).
    """
    return max(2, (os.cpu_count() or 1) * 3 // 2)


def pytest_collection_modifyitems(items) -> None:
    """Mark ``pipeline`` every test that needs the built copy, so that ``-m "not pipeline"``
    selects the quick ones; and run those first, then the slow ones, then the rest.

    The order is for the parallel workers: while one makes the copy, the others run tests
    that need none, and the longest tests start early rather than last on one worker.
    """
    for item in items:
        if "built_repo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)

    def rank(item) -> int:
        if not item.get_closest_marker("pipeline"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable: within each rank, the modules' own order


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory) -> Path:
    """A copy of the project with its pipeline built (``build_project``). Read it; do not
    change it.

    Built once per test run: parallel workers (``-n``) share the build, each reading its
    own copy of it.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # base is this worker's folder in the run's
        return shared_build(base.parent / "cali-reg-build", base / "built")
    return shared_build(base / "cali-reg-build", base / "cali-reg-build" / "built")


@pytest.fixture
def repo(built_repo, tmp_path) -> Path:
    """A private, already-built copy (outputs and DVC cache included) that a test may change."""
    dest = tmp_path / "repo"
    copy_built(built_repo, dest)
    return dest
