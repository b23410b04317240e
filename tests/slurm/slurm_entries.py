"""Tiny entries run as Slurm jobs by the tests in this folder (pickled by value; see conftest.py)."""
import functools
import json
import os
import shutil
import socket
import subprocess
import time

START_HINT = "start it with `tests/slurm/start_cluster.sh` (root; stop with tests/slurm/stop_cluster.sh)"


def hello_entry(args):
    """Both nodes: init a gloo group across node1/node2 and all-reduce; return what rank 0 saw."""
    import torch
    import torch.distributed as dist

    from pretrain import distributed as D

    info = D.init_distributed()
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    nodes = [None] * info.world_size
    dist.all_gather_object(nodes, os.environ.get("SLURMD_NODENAME", socket.gethostname()))
    out = {"sum": t.item(), "world": info.world_size, "backend": info.backend, "nodes": nodes,
           "master": os.environ["MASTER_ADDR"], "local_world": os.environ["LOCAL_WORLD_SIZE"],
           "opts": list(args.opts)}
    D.shutdown()
    return out


def step_value(step: int, world: int) -> float:
    """What one step adds to the running total: an all-reduce of (rank+1)*(step+1) over the ranks."""
    return sum((r + 1) * (step + 1) for r in range(world)) * 0.5 ** (step % 3)


def counting_entry(args):
    """A resumable 'training loop' with a file checkpoint: ``args.n_steps`` steps of ``args.step_s`` seconds.

    Every step all-reduces a rank-dependent value into a running total (so a lost or repeated step changes
    the result). Each run appends its starting step to ``starts.json``; ``progress`` holds the last step.
    """
    import torch
    import torch.distributed as dist

    from pretrain import distributed as D
    from pretrain import preemption

    info = D.init_distributed()
    out = args.output_dir
    ckpt = os.path.join(out, "ckpt.json")
    state = {"step": 0, "total": 0.0, "values": []}
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            state = json.load(f)
    if info.rank == 0:
        starts_path = os.path.join(out, "starts.json")
        starts = json.load(open(starts_path)) if os.path.exists(starts_path) else []
        _write_json(starts_path, starts + [state["step"]])
    while state["step"] < args.n_steps:
        t = torch.tensor([float((info.rank + 1) * (state["step"] + 1))])
        if dist.is_initialized():
            dist.all_reduce(t)
        v = t.item() * 0.5 ** (state["step"] % 3)
        state["total"] += v
        state["values"].append(v)
        state["step"] += 1
        time.sleep(args.step_s)
        if info.rank == 0:
            _write_json(os.path.join(out, "progress.json"), {"step": state["step"]})
        if preemption.stop_requested():
            if info.rank == 0:
                _write_json(ckpt, state)
            preemption.requeue_and_exit()  # barrier, rank 0 requeues, every rank exits
    starts = json.load(open(os.path.join(out, "starts.json")))
    D.shutdown()
    return {"total": state["total"], "values": state["values"], "starts": starts, "world": info.world_size}


def sleepy_entry(args):
    """Never polls stop_requested(): preemption falls back to submitit's requeue-now handler."""
    out = args.output_dir
    runs = os.path.join(out, "runs.txt")
    with open(runs, "a") as f:
        f.write(f"{os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
    n = len(open(runs).read().split())
    if n == 1:
        time.sleep(120)  # the test interrupts this first run
    return {"runs": n}


def _write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def job_log(job) -> str:
    """All ranks' stdout+stderr of a submitit job (for assertion messages; test side only)."""
    out = []
    for t in list(job._sub_jobs) or [job]:
        for name in ("stdout", "stderr"):
            p = getattr(t.paths, name)
            if p.exists():
                out.append(f"--- rank {t._tasks[0]} {name} ---\n{p.read_text()[-4000:]}")
    return "\n".join(out)


def wait_until(pred, timeout_s=120, poll_s=0.2, what="condition"):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(poll_s)


def task_pids(job_id, rank=None):
    """Pids of the job's python tasks on this host (found by their SLURM_JOB_ID/SLURM_PROCID environment)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            if b"submitit.core._submit" not in cmd:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"SLURM_JOB_ID") == str(job_id).encode() and \
                (rank is None or env.get(b"SLURM_PROCID") == str(rank).encode()):
            pids.append(int(d))
    return pids


@functools.lru_cache(maxsize=1)
def cluster_problem() -> str | None:
    """None when the 2-node test cluster answers, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return f"Slurm test cluster not available: `sinfo`/`sbatch` not installed; {START_HINT}"
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return f"Slurm test cluster not available: `sinfo` did not answer within 5 s; {START_HINT}"
    if r.returncode != 0:
        return f"Slurm test cluster not available: `sinfo` failed ({r.stderr.strip()[:200]}); {START_HINT}"
    states = dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)
    ok = {n for n, s in states.items() if s.rstrip("*~#") in ("idle", "mix", "alloc", "comp")}
    if not {"node1", "node2"} <= ok:
        return f"Slurm test cluster not usable: node states {states} (need node1 and node2 up); {START_HINT}"
    return None
