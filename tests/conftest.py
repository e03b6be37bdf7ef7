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
    selects the quick ones; and order the tests for the parallel workers.

    Longest first, as a scheduler of jobs on parallel machines would: the modules with
    ``slow`` tests, then those using the built copy, then the quick ones, which fill the
    workers' last seconds evenly. A module's tests stay together (its module-scoped
    fixtures, such as a server or an image, start once per worker), its slow ones first.
    """
    for item in items:
        if "built_repo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)

    def rank(item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("pipeline") else 2

    module_rank: dict[str, int] = {}
    for item in items:
        module = item.module.__name__
        module_rank[module] = min(module_rank.get(module, 2), rank(item))
    # stable: the modules in their own order within a rank, their tests in theirs
    items.sort(
        key=lambda item: (module_rank[item.module.__name__], item.module.__name__, rank(item) > 0)
    )


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A folder that all the parallel workers of this test run share (``once_per_run``)."""
    base = tmp_path_factory.getbasetemp()
    # under pytest-xdist, base is this worker's folder in the run's
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def built_repo(run_dir, tmp_path_factory) -> Path:
    """A copy of the project with its pipeline built (``build_project``). Read it; do not
    change it.

    Built once per test run: parallel workers (``-n``) share the build, each reading its
    own copy of it.
    """
    return shared_build(run_dir / "cali-reg-build", tmp_path_factory.getbasetemp() / "built")


@pytest.fixture
def repo(built_repo, tmp_path) -> Path:
    """A private, already-built copy (outputs and DVC cache included) that a test may change."""
    dest = tmp_path / "repo"
    copy_built(built_repo, dest)
    return dest
