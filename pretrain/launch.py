"""One launcher for a laptop, a multi-GPU workstation and a Slurm cluster.

Every octo launcher (``launchers/*.py``) builds an ``argparse`` parser, calls :func:`add_launcher_args` and
hands a picklable top-level ``entry(args) -> result`` to :func:`launch`. ``entry`` runs in every process and
calls :func:`pretrain.distributed.init_distributed` itself; ``launch`` only prepares the process layout:

* **local, 1 process** (``--nodes 1 --ngpus 1``, the CPU default): ``entry(args)`` in this process.
* **local, N processes** (``nodes * ngpus > 1``): N ``spawn``-ed processes, each started with a torchrun-style
  environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT=<free>);
  on CPU they use gloo. A failing rank stops the others and fails the launch with that rank's traceback;
  rank 0's result is returned.
* **already distributed** (run under ``torchrun`` or ``srun`` with several tasks): ``entry(args)`` in this
  process; the environment is already there.
* **Slurm** (``--cluster slurm``, or ``auto`` when ``sinfo`` answers and we are not inside a Slurm job):
  a submitit job with ``--nodes`` x ``--ngpus`` tasks; :class:`SlurmTask` exports the torchrun-style
  environment from ``submitit.JobEnvironment`` and runs ``entry``. Returns the submitit ``Job`` (or rank 0's
  result with ``wait=True``/``--wait``). Preemption and the time limit are handled by
  :mod:`pretrain.preemption` (checkpoint at a step boundary, requeue, resume from ``--output-dir``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing.connection
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from . import preemption
from .cpu_allocator import tune_cpu_allocator


class LaunchError(RuntimeError):
    """A launch problem (bad flag, unwritable output dir) or a failed rank / Slurm job (with its traceback)."""


# ------------------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------------------

def _default_ngpus() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    except Exception:  # pragma: no cover - torch always importable in octo
        return 1


def add_launcher_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the launcher flags shared by every octo launcher (and the trailing ``key=value`` overrides)."""
    g = parser.add_argument_group("launcher (local or Slurm)")
    g.add_argument("--config-file", default=None, help="recipe YAML (merged over the recipe defaults)")
    g.add_argument("--output-dir", default=None,
                   help="where checkpoints, logs and submitit files go (default ./outputs/<job-name>-<timestamp>); "
                        "rerunning with the same --output-dir resumes from its latest checkpoint")
    g.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    g.add_argument("--ngpus", type=int, default=_default_ngpus(),
                   help="processes per node = GPUs per node (default: CUDA GPUs here, or 1 on CPU; on CPU each "
                        "process uses gloo)")
    g.add_argument("--cluster", choices=("auto", "slurm", "local"), default="auto",
                   help="auto: Slurm when `sinfo` answers and we are not already inside a Slurm job, else local")
    g.add_argument("--local", action="store_true", help="force a local run (same as --cluster local)")
    g.add_argument("--wait", action="store_true", help="Slurm: block until the job ends and print its result")
    g.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    g.add_argument("--timeout", type=int, default=2800, help="Slurm time limit in minutes (default 2800)")
    g.add_argument("--signal-delay", type=int, default=120,
                   help="Slurm: seconds before the time limit at which USR2 asks for checkpoint+requeue (120)")
    g.add_argument("--account", default=None, help="Slurm account")
    g.add_argument("--qos", default=None, help="Slurm QOS")
    g.add_argument("--constraint", default=None, help="Slurm node constraint (e.g. volta32gb)")
    g.add_argument("--exclude", default=None, help="Slurm nodes to exclude (e.g. node[3-4])")
    g.add_argument("--mem-gb", type=float, default=0,
                   help="Slurm memory per node in GB (default 0 = the whole node)")
    g.add_argument("--cpus-per-task", type=int, default=None,
                   help="Slurm CPUs per process (default: the cluster's default, usually 1); data loader workers "
                        "need more")
    g.add_argument("--gpus-per-node", type=int, default=None,
                   help="Slurm GPUs per node (default: --ngpus when the cluster offers GPUs, else 0)")
    g.add_argument("--job-name", default=None, help="Slurm job name and default output-dir name")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as key=value (e.g. optim.epochs=10 train.batch_size_per_gpu=32)")
    return parser


def _get(args, name, default=None):
    v = getattr(args, name, default)
    return default if v is None else v


def _validate(args) -> None:
    nodes, ngpus = _get(args, "nodes", 1), _get(args, "ngpus", 1)
    if int(nodes) < 1:
        raise LaunchError(f"--nodes must be >= 1 (got {nodes})")
    if int(ngpus) < 1:
        raise LaunchError(f"--ngpus (processes per node) must be >= 1 (got {ngpus})")
    timeout, delay = _get(args, "timeout", 2800), _get(args, "signal_delay", 120)
    if int(timeout) < 1:
        raise LaunchError(f"--timeout is in minutes and must be >= 1 (got {timeout})")
    if not 0 <= int(delay) < int(timeout) * 60:
        raise LaunchError(f"--signal-delay must be in [0, --timeout*60) seconds (got {delay} with --timeout "
                          f"{timeout} min)")
    opts = list(_get(args, "opts", []))
    if opts and opts[0] == "--":
        opts = opts[1:]
    bad = [o for o in opts if "=" not in o]
    if bad:
        raise LaunchError(f"unrecognised arguments {bad}: flags go before the overrides, and overrides are "
                          f"key=value (e.g. optim.epochs=10)")
    if hasattr(args, "opts"):
        args.opts = opts


# ------------------------------------------------------------------------------------------------------------
# cluster detection, output dir
# ------------------------------------------------------------------------------------------------------------

def slurm_reachable(timeout_s: float = 5.0) -> bool:
    """True when ``sinfo`` exists and answers within ``timeout_s`` seconds."""
    if shutil.which("sinfo") is None:
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=timeout_s)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return r.returncode == 0


def inside_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def resolve_cluster(args) -> str:
    """``"slurm"`` or ``"local"`` from ``--cluster``/``--local`` (see :func:`add_launcher_args`)."""
    choice = _get(args, "cluster", "auto")
    if _get(args, "local", False):
        if choice == "slurm":
            raise LaunchError("--local contradicts --cluster slurm; pass one of them")
        return "local"
    if choice == "local":
        return "local"
    if choice == "slurm":
        if shutil.which("sbatch") is None:
            raise LaunchError("--cluster slurm but `sbatch` is not on PATH; run on a Slurm login node or use "
                              "--cluster local")
        return "slurm"
    return "slurm" if (not inside_slurm_job() and slurm_reachable()) else "local"


def default_job_name(entry: Callable, args) -> str:
    name = _get(args, "job_name")
    if name:
        return str(name)
    cfg = _get(args, "config_file")
    stem = Path(cfg).stem if cfg else getattr(entry, "__name__", "job")
    return f"octo-{stem}"


def ensure_writable_dir(path: str | os.PathLike, flag: str = "--output-dir") -> str:
    """Create ``path`` (absolute) and prove it is writable, or raise a :class:`LaunchError` naming ``flag``."""
    p = Path(path).expanduser().absolute()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".octo-write-test-"):
            pass
    except OSError as e:
        raise LaunchError(f"{flag} {p} is not writable ({e.strerror or e}); pass a writable {flag}") from None
    return str(p)


def resolve_output_dir(entry: Callable, args) -> str:
    """Fill ``args.output_dir`` (absolute; default ``./outputs/<job-name>-<timestamp>``) and check it early."""
    out = _get(args, "output_dir")
    if not out:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join("outputs", f"{default_job_name(entry, args)}-{stamp}")
    out = ensure_writable_dir(out)
    args.output_dir = out
    return out


# ------------------------------------------------------------------------------------------------------------
# launch
# ------------------------------------------------------------------------------------------------------------

def launch(entry: Callable[[Any], Any], args, wait: bool | None = None):
    """Run ``entry(args)`` in the process layout described by ``args`` (see the module docstring).

    Returns rank 0's result for local runs; for Slurm the submitit ``Job`` (or, with ``wait`` - default
    ``args.wait`` - rank 0's result once the job, requeues included, finished).
    """
    _validate(args)
    mode = resolve_cluster(args)
    resolve_output_dir(entry, args)
    if wait is None:
        wait = bool(_get(args, "wait", False))
    if mode == "slurm":
        job = submit_slurm(entry, args)
        return wait_for_job(job) if wait else job
    nprocs = int(_get(args, "nodes", 1)) * int(_get(args, "ngpus", 1))
    try:
        if nprocs == 1 or _already_distributed():
            return _run_in_process(entry, args)
        return launch_local(entry, args, nprocs)
    except preemption.Preempted as e:
        print(f"[octo] {e}", file=sys.stderr, flush=True)
        raise


def _already_distributed() -> bool:
    """Inside torchrun (complete env) or a multi-task srun step: the processes already exist."""
    torchrun = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    srun = "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return torchrun or srun


def _run_in_process(entry, args):
    tune_cpu_allocator()
    fresh = not preemption._installed
    preemption.install_handlers()
    try:
        return entry(args)
    finally:
        if fresh:
            preemption.uninstall_handlers()


# ---- local multi-process -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _patched_environ(env: dict):
    """Temporarily set ``env`` here so a spawned child inherits it from its very first instruction."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local_worker(entry, args, env: dict, conn) -> None:
    os.environ.update(env)
    tune_cpu_allocator()
    preemption.install_handlers()
    code = 0
    try:
        result = entry(args)
        msg = ("ok", result if env["RANK"] == "0" else None)
    except preemption.Preempted as e:
        msg, code = ("preempted", str(e)), preemption.PREEMPTED_EXIT_CODE
    except BaseException:  # noqa: BLE001 - report everything, including SystemExit, to the parent
        msg, code = ("error", traceback.format_exc()), 1
    try:
        conn.send(msg)
    except Exception:  # noqa: BLE001 - e.g. an unpicklable result
        conn.send(("error", f"could not send rank {env['RANK']}'s result to the launcher:\n"
                            f"{traceback.format_exc()}"))
        code = 1
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip atexit handlers of libraries that could hang after a failed collective


def launch_local(entry, args, nprocs: int):
    """Spawn ``nprocs`` ranks on this machine; return rank 0's result or raise the first failure."""
    import torch.multiprocessing as mp

    from .distributed import free_port

    ngpus = int(_get(args, "ngpus", 1))
    try:
        import torch

        if torch.cuda.is_available() and ngpus > torch.cuda.device_count():
            raise LaunchError(f"--ngpus {ngpus} but only {torch.cuda.device_count()} CUDA devices are visible")
    except ImportError:  # pragma: no cover
        pass
    ctx = mp.get_context("spawn")
    port = str(free_port())
    threads = str(max(1, (os.cpu_count() or 1) // nprocs))
    procs, conns = [], []
    for rank in range(nprocs):
        env = {"RANK": str(rank), "WORLD_SIZE": str(nprocs), "LOCAL_RANK": str(rank % ngpus),
               "LOCAL_WORLD_SIZE": str(ngpus), "GROUP_RANK": str(rank // ngpus), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = threads
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_local_worker, args=(entry, args, env, send), name=f"octo-rank{rank}", daemon=False)
        with _patched_environ(env):
            p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    return _supervise(procs, conns)


def _supervise(procs, conns):
    """Collect one message per rank; on the first failure kill the others and raise its traceback."""
    results: dict[int, tuple] = {}
    forwarded = {}

    def forward(signum, frame):  # a stop signal to the launcher reaches every rank (they save and stop)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            forwarded[sig] = signal.signal(sig, forward)
    try:
        pending = set(range(len(procs)))
        while pending:
            ready = multiprocessing.connection.wait([conns[r] for r in pending] +
                                                    [procs[r].sentinel for r in pending], timeout=1.0)
            for r in sorted(pending):
                if conns[r] in ready or conns[r].poll():
                    try:
                        results[r] = conns[r].recv()
                    except EOFError:
                        results[r] = ("error", None)
                elif procs[r].sentinel in ready and not conns[r].poll():
                    procs[r].join(timeout=1)
                    results[r] = ("error", None)
                else:
                    continue
                pending.discard(r)
                if results[r][0] == "error":
                    procs[r].join(timeout=5)
                    tb = results[r][1] or f"(no traceback: the process died with exit code {procs[r].exitcode})"
                    _kill(procs)
                    raise LaunchError(f"rank {r} of {len(procs)} failed:\n{tb}")
        for p in procs:
            p.join(timeout=30)
    finally:
        _kill(procs)
        for sig, prev in forwarded.items():
            signal.signal(sig, prev)
        for c in conns:
            c.close()
    stopped = [r for r, (kind, _) in results.items() if kind == "preempted"]
    if stopped:
        raise preemption.Preempted(results[stopped[0]][1])
    return results[0][1]


def _kill(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=10)


# ---- Slurm -------------------------------------------------------------------------------------------------

def master_port_for_job(job_id) -> int:
    """Rendezvous port from the Slurm job id (the same rule as :mod:`pretrain.distributed`)."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 20000 + int(digits) % 20000


class SlurmTask:
    """The callable submitit pickles: exports a torchrun-style environment, then runs ``entry(args)``.

    A requeued job (preemption, time limit) runs the very same pickle again, so ``entry`` sees the same
    ``args`` - in particular the same ``output_dir`` - and resumes from its latest checkpoint.
    ``checkpoint()`` is only used by submitit's own signal handler, which :mod:`pretrain.preemption` keeps as
    a fallback for entries that never poll ``stop_requested()``: it requeues the same task.
    """

    def __init__(self, entry: Callable, args):
        self.entry = entry
        self.args = args

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        hosts = list(env.hostnames)
        os.environ.update({
            "RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(max(1, env.num_tasks // max(1, env.num_nodes))), "GROUP_RANK": str(env.node),
            "MASTER_ADDR": hosts[0], "MASTER_PORT": str(master_port_for_job(env.raw_job_id)),
        })
        tune_cpu_allocator()
        preemption.install_handlers()  # after submitit's: replaces its USR2 handler (kept as fallback)
        if env.global_rank == 0:
            print(f"[octo] {env}; master {hosts[0]}:{os.environ['MASTER_PORT']}; "
                  f"output_dir {_get(self.args, 'output_dir')}", flush=True)
        return self.entry(self.args)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTask(self.entry, self.args))


def cluster_has_gpus(partition: str | None = None) -> bool:
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (subprocess.TimeoutExpired, OSError):
        return False
    return "gpu" in out.lower()


def slurm_parameters(args) -> dict:
    """submitit ``AutoExecutor`` parameters from the launcher flags."""
    ngpus = int(_get(args, "ngpus", 1))
    gpus = _get(args, "gpus_per_node")
    if gpus is None:
        gpus = ngpus if cluster_has_gpus(_get(args, "partition")) else 0
    params = {
        "nodes": int(_get(args, "nodes", 1)), "tasks_per_node": ngpus,
        "timeout_min": int(_get(args, "timeout", 2800)), "slurm_signal_delay_s": int(_get(args, "signal_delay", 120)),
        "mem_gb": _get(args, "mem_gb", 0), "name": _get(args, "job_name") or "octo",
    }
    if gpus:
        params["gpus_per_node"] = int(gpus)
    if _get(args, "cpus_per_task"):
        params["cpus_per_task"] = int(args.cpus_per_task)
    for flag in ("partition", "account", "qos", "constraint", "exclude"):
        if _get(args, flag):
            params[f"slurm_{flag}"] = getattr(args, flag)
    return params


def submit_slurm(entry: Callable, args):
    """Submit ``SlurmTask(entry, args)`` with submitit; folder ``<output_dir>/submitit``. Returns the Job."""
    import submitit

    if not _get(args, "job_name"):
        args.job_name = default_job_name(entry, args)
    folder = os.path.join(args.output_dir, "submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=30)
    executor.update_parameters(**slurm_parameters(args))
    job = executor.submit(SlurmTask(entry, args))
    paths = submitit.core.utils.JobPaths(folder, job_id=job.job_id, task_id=0)
    print(f"[octo] submitted Slurm job {job.job_id} ({args.nodes} node(s) x {args.ngpus} task(s)); "
          f"output dir {args.output_dir}\n[octo] logs: {paths.stdout} / {paths.stderr} (rank 0; other ranks "
          f"{job.job_id}_<rank>_log.*)", flush=True)
    return job


_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
             "DEADLINE", "SPECIAL_EXIT"}


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from ``squeue`` (works without accounting); None when squeue does not know it."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-t", "all", "-o", "%T"], capture_output=True,
                           text=True, timeout=15)
    except (subprocess.TimeoutExpired, OSError):
        return None
    lines = r.stdout.split()
    return lines[0].strip().upper() if r.returncode == 0 and lines else None


def _task_jobs(job):
    return list(job._sub_jobs) or [job]


def wait_for_job(job, timeout_s: float | None = None, poll_s: float = 1.0, grace_s: float = 20.0):
    """Wait for a submitit job (requeues included) and return rank 0's result.

    Works without Slurm accounting (``sacct``): progress is read from the result files and ``squeue``. A rank
    that fails raises :class:`LaunchError` with its traceback at once (the job is cancelled: the other ranks
    would block in their next collective); a job that ends without results raises with its log tail.
    """
    from submitit.core import utils as su

    start, ended_at, last_state = time.time(), None, None
    tasks = _task_jobs(job)
    while True:
        for t in tasks:
            if t.paths.result_pickle.exists():
                try:
                    outcome, payload = su.pickle_load(t.paths.result_pickle)
                except (EOFError, OSError):
                    continue
                if outcome == "error":
                    subprocess.run(["scancel", str(job.job_id)], capture_output=True, timeout=30)
                    raise LaunchError(f"Slurm job {job.job_id} rank {t._tasks[0]} failed:\n{payload}\n"
                                      f"logs: {t.paths.stderr}")
        if all(t.paths.result_pickle.exists() for t in tasks):
            return tasks[0].result()
        state = slurm_job_state(job.job_id)
        last_state = state or last_state
        if state is None or state in _TERMINAL:
            ended_at = ended_at or time.time()
            if time.time() - ended_at > grace_s:
                log = tasks[0].stderr() or ""
                raise LaunchError(f"Slurm job {job.job_id} ended ({last_state or 'unknown state'}) without "
                                  f"results; rank 0 stderr tail:\n{log[-3000:]}\nlogs: {tasks[0].paths.stderr}")
        else:
            ended_at = None
        if timeout_s is not None and time.time() - start > timeout_s:
            raise LaunchError(f"Slurm job {job.job_id} not finished after {timeout_s:.0f} s (state {last_state})")
        time.sleep(poll_s)


def training_main(doc: str, config_from_args: Callable, entry: Callable, example_config: str, argv=None) -> int:
    """The whole command line of a training launcher: parse the launcher flags, validate the config BEFORE
    submitting anything (a bad key fails in seconds with exit code 2, not after queueing), launch, print the
    summary. ``config_from_args(args, world_size)`` resolves the recipe config; ``entry(args)`` trains."""
    from .config import ConfigError

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error(f"--config-file is required (e.g. {example_config})")
    try:
        cfg = config_from_args(args, world_size=args.nodes * args.ngpus)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "output_dir", None):
        args.output_dir = cfg.train.output_dir
    result = launch(entry, args)
    if isinstance(result, dict):
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def evaluation_main(doc: str, add_eval_args: Callable, entry: Callable, argv=None):
    """The whole command line of an evaluation launcher: the shared launcher flags, the evaluator's own
    arguments (``add_eval_args(parser)``), then ``launch(entry, args)``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launcher_args(parser)
    add_eval_args(parser)
    return launch(entry, parser.parse_args(argv))
