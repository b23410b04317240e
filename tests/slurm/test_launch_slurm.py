"""pretrain.launch on the local 2-node Slurm cluster: multi-node rendezvous, preemption, time limit."""
import json
import time

import pytest

from pretrain.launch import LaunchError, launch, wait_for_job
from slurm_entries import counting_entry, hello_entry, job_log, sleepy_entry, wait_until


def _reference_values(n_steps, world):
    # independent of the entry: per step, sum over ranks of (rank+1)*(step+1), damped by 0.5**(step % 3)
    return [float(sum((r + 1) * (s + 1) for r in range(world))) * (0.5 ** (s % 3)) for s in range(n_steps)]


def _progress(run_dir):
    p = run_dir / "progress.json"
    try:
        return json.loads(p.read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_two_nodes_one_task_each_allreduce(slurm_args):
    job = launch(hello_entry, slurm_args("--nodes", "2", "--ngpus", "1", "a.b=1"))
    res = wait_for_job(job, timeout_s=120)
    assert res["world"] == 2 and res["sum"] == 3.0 and res["backend"] == "gloo", job_log(job)
    assert res["nodes"] == ["node1", "node2"] and res["master"] == "node1" and res["local_world"] == "1"
    assert res["opts"] == ["a.b=1"]


def test_preemption_then_time_limit_checkpoint_requeue_resume(slurm_args, run_dir):
    """A preemption (SIGTERM + SIGUSR2), then a time-limit signal (SIGUSR2 alone): each time the entry sees
    stop_requested() on both nodes, saves, requeues and resumes; the result equals an uninterrupted run."""
    n = 24
    job = launch(counting_entry, slurm_args("--nodes", "2", "--ngpus", "1", n_steps=n, step_s=0.25))
    wait_until(lambda: _progress(run_dir) >= 3, what="first run progress")
    job._interrupt()  # preemption
    wait_until(lambda: _n_starts(run_dir) >= 2 and _progress(run_dir) >= 10, what="second run progress")
    job._interrupt(timeout=True)  # time limit reached
    res = wait_for_job(job, timeout_s=240)
    starts = res["starts"]
    assert len(starts) == 3 and starts[0] == 0 and 3 <= starts[1] < starts[2] < n, (starts, job_log(job))
    assert res["values"] == _reference_values(n, 2)  # no step lost or repeated across the requeues
    assert res["total"] == pytest.approx(sum(_reference_values(n, 2)))
    assert job.results()[0] == res  # submitit's own result is the final run's (rank 0)


def _n_starts(run_dir):
    try:
        return len(json.loads((run_dir / "starts.json").read_text()))
    except (OSError, ValueError):
        return 0


def test_entry_that_never_polls_is_requeued_by_submitit_fallback(slurm_args, run_dir):
    job = launch(sleepy_entry, slurm_args("--nodes", "1", "--ngpus", "1"))
    wait_until(lambda: (run_dir / "runs.txt").exists(), what="first run")
    time.sleep(1)
    job._interrupt()
    assert wait_for_job(job, timeout_s=120) == {"runs": 2}, job_log(job)


def test_failing_job_raises_with_traceback(slurm_args):
    args = slurm_args("--nodes", "1", "--ngpus", "1", n_steps="not a number", step_s=0.0)
    job = launch(counting_entry, args)
    with pytest.raises(LaunchError, match="TypeError"):
        wait_for_job(job, timeout_s=120)
