"""Fixtures for the tests that need the local 2-node Slurm cluster (tests/slurm/start_cluster.sh).

Every test in this folder is marked ``slurm`` and skipped, with the reason, when the cluster is not up
(``sinfo`` missing, not answering, or node1/node2 not usable), so ``pytest`` on a laptop still passes.
Entries submitted from these tests are pickled *by value* (cloudpickle), so the job does not need to import
the test modules.
"""
import argparse
import os
import subprocess
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from slurm_entries import cluster_problem  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(autouse=True)
def _need_cluster(request):
    if request.node.get_closest_marker("slurm") is not None:
        problem = cluster_problem()
        if problem:
            pytest.skip(problem)


@pytest.fixture(scope="session", autouse=True)
def _entries_by_value():
    """Pickle the helper modules' functions by value, so jobs need not import the test folder."""
    import cloudpickle

    import slurm_entries

    cloudpickle.register_pickle_by_value(slurm_entries)
    yield
    cloudpickle.unregister_pickle_by_value(slurm_entries)


@pytest.fixture
def run_dir(tmp_path):
    """A fresh output dir (and so a fresh ``<output_dir>/submitit`` folder) for each test: a reused folder
    could hand submitit a stale result file of an earlier job with the same id."""
    d = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d


@pytest.fixture
def job_name():
    """A unique Slurm job name per test; whatever of it is still queued or running is cancelled afterwards."""
    name = f"octo-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30)


@pytest.fixture
def slurm_args(run_dir, job_name):
    """Parse launcher flags for the CPU test cluster (no GPUs) into ``run_dir``; extra attributes via kwargs."""
    from pretrain.launch import add_launcher_args

    def make(*flags, **extra):
        parser = add_launcher_args(argparse.ArgumentParser())
        args = parser.parse_args(["--cluster", "slurm", "--gpus-per-node", "0", "--output-dir", str(run_dir),
                                  "--timeout", "10", "--job-name", job_name, *flags])
        for k, v in extra.items():
            setattr(args, k, v)
        return args

    return make
