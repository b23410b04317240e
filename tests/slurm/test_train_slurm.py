"""End to end on the 2-node Slurm cluster with the real launchers (CPU, gloo, FSDP2, tiny config).

One uninterrupted 2-rank run (``launchers/train_dinov2.py --nodes 2 --ngpus 1``) is the reference; preempted,
time-limited and crashed-then-relaunched runs must end with the same loss sequence and teacher weights, and
a 2-rank checkpoint must resume as 1 rank and as 4 ranks (2 nodes x 2).
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from pretrain.launch import LaunchError, launch, slurm_job_state, wait_for_job
from slurm_entries import cluster_problem, job_log, task_pids, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny_cpu.yaml")
N_ITER = 8  # tiny_cpu: 2 epochs x 4 iterations, checkpoint every 2
SLURM = ["--cluster", "slurm", "--gpus-per-node", "0", "--timeout", "15"]


def _run_launcher(script, *argv, timeout=400):
    r = subprocess.run([sys.executable, os.path.join(REPO, "launchers", script), *argv], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _losses(out_dir):
    """Last record per iteration of metrics.jsonl (a requeued run may re-log an iteration)."""
    recs = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            recs[r["iteration"]] = r
    return [(i, recs[i]["total_loss"]) for i in sorted(recs)]


def _teacher(out_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(out_dir, "teacher_backbone.safetensors"))


def _assert_same_training(out_dir, ref_dir):
    assert _losses(out_dir) == _losses(ref_dir)
    a, b = _teacher(out_dir), _teacher(ref_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"teacher weight {k} differs")


def _iters_logged(out_dir):
    try:
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            return max((json.loads(line)["iteration"] for line in f if line.strip()), default=0)
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Item 1: the DINOv2 launcher submits a 2-node job that trains, checkpoints and exports the teacher."""
    if cluster_problem():
        pytest.skip(cluster_problem())
    out = str(tmp_path_factory.mktemp("ref") / "run")
    stdout = _run_launcher("train_dinov2.py", "--config-file", TINY, "--nodes", "2", "--ngpus", "1", *SLURM,
                           "--output-dir", out, "--wait")
    return out, stdout


def _train_args(slurm_args, *flags):
    return slurm_args("--config-file", TINY, *flags)


def _train_entry():
    from pretrain.dinov2.entry import train_entry

    return train_entry


def test_train_two_nodes_then_knn_on_slurm(reference, run_dir):
    out, stdout = reference
    assert "submitted Slurm job" in stdout and f"iterations: {N_ITER}" in stdout, stdout
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert f"iter_{N_ITER:08d}" in ckpts and os.path.isfile(os.path.join(out, "teacher_backbone.safetensors"))
    assert [i for i, _ in _losses(out)] == list(range(1, N_ITER + 1))
    cfg = os.path.join(out, "config.yaml")
    knn_out = str(run_dir / "knn")
    _run_launcher("eval_knn.py", "--config-file", cfg, "--weights", os.path.join(out, "teacher_backbone.safetensors"),
                  "--train-dataset", "synthetic:n=32:size=32:classes=4", "--test-dataset",
                  "synthetic:n=16:size=32:classes=4:seed=1", "--resize", "32", "--crop", "32", "--batch-size", "8",
                  "--num-workers", "0", "--ks", "1", "5", "--nodes", "2", "--ngpus", "1", *SLURM,
                  "--output-dir", knn_out, "--wait")
    with open(os.path.join(knn_out, "results_eval_knn.json")) as f:
        res = json.loads(f.readline())
    assert res["n_train"] == 32 and res["n_test"] == 16
    assert os.listdir(os.path.join(knn_out, "submitit"))  # it ran as a Slurm job


def test_preemption_and_time_limit_match_uninterrupted(reference, slurm_args, run_dir):
    """Items 2 + 3: a preemption (TERM+USR2) and a time-limit signal (USR2), each followed by a requeue."""
    ref_out, _ = reference
    args = _train_args(slurm_args, "--nodes", "2", "--ngpus", "1")
    job = launch(_train_entry(), args)
    out = args.output_dir
    wait_until(lambda: _iters_logged(out) >= 2, timeout_s=180, what="iteration 2")
    job._interrupt()  # preemption
    wait_until(lambda: _iters_logged(out) >= 5, timeout_s=180, what="iteration 5 after the first requeue")
    job._interrupt(timeout=True)  # time limit
    wait_for_job(job, timeout_s=300)
    log = job_log(job)
    assert log.count("[octo] stop requested") == 2 and log.count("resumed from") == 2, log
    _assert_same_training(out, ref_out)


def test_crash_then_relaunch_resumes_from_last_checkpoint(reference, slurm_args, run_dir):
    """Item 4: kill -9 one rank mid-run; the same command relaunched resumes from the last checkpoint."""
    ref_out, _ = reference
    args = _train_args(slurm_args, "--nodes", "2", "--ngpus", "1")
    job = launch(_train_entry(), args)
    out = args.output_dir
    wait_until(lambda: os.path.isfile(os.path.join(out, "checkpoints", "iter_00000002", "COMPLETE"))
               and _iters_logged(out) >= 3, timeout_s=180, what="checkpoint 2")
    pids = task_pids(job.job_id, rank=1)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(LaunchError):
        wait_for_job(job, timeout_s=90)
    job.cancel(check=False)
    wait_until(lambda: slurm_job_state(job.job_id) in (None, "CANCELLED", "FAILED", "COMPLETED"), timeout_s=60,
               what="crashed job to end")
    assert not os.path.isfile(os.path.join(out, "teacher_backbone.safetensors"))
    job2 = launch(_train_entry(), _train_args(slurm_args, "--nodes", "2", "--ngpus", "1"))
    wait_for_job(job2, timeout_s=300)
    assert "resumed from" in job_log(job2)
    _assert_same_training(out, ref_out)


@pytest.mark.parametrize("nodes,ngpus", [(1, 1), (2, 2)])
def test_two_rank_checkpoint_resumes_resharded(reference, slurm_args, run_dir, nodes, ngpus):
    """Item 5: the 2-rank checkpoint of iteration 4 resumes as 1 rank and as 4 ranks and trains to the end."""
    ref_out, _ = reference
    out = run_dir / "reshard"
    os.makedirs(out / "checkpoints")
    shutil.copytree(os.path.join(ref_out, "checkpoints", "iter_00000004"), out / "checkpoints" / "iter_00000004")
    args = _train_args(slurm_args, "--nodes", str(nodes), "--ngpus", str(ngpus))
    args.output_dir = str(out)
    job = launch(_train_entry(), args)
    res = wait_for_job(job, timeout_s=300)
    log = job_log(job)
    assert f"at iteration 4 (world size now {nodes * ngpus})" in log, log
    assert res["iterations"] == N_ITER and os.path.isfile(out / "teacher_backbone.safetensors")
    assert [i for i, _ in _losses(out)] == list(range(5, N_ITER + 1))
