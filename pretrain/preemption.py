"""Graceful stop on preemption or time limit: flag on signal, save at a step boundary, requeue, resume.

Protocol (the train loop's side)::

    preemption.install_handlers()           # done for you by pretrain.launch in every launched process
    for it in range(start_it, max_it):
        ...one step...
        if preemption.stop_requested():     # collective: call it on every rank at the same step
            save_checkpoint(...)
            preemption.requeue_and_exit()   # never returns

Signals. Slurm sends SIGUSR2 ``--signal-delay`` seconds before the time limit (``#SBATCH
--signal=USR2@<delay>`` written by submitit), submitit's ``job._interrupt()`` sends SIGTERM then SIGUSR2
(preemption) or SIGUSR2 alone (time-out), and a real Slurm preemption or ``scancel`` sends SIGTERM. The
handlers installed here only set a flag: no I/O, no collective, nothing that could deadlock inside a signal
handler or interrupt a half-written checkpoint.

Why submitit's own handler is replaced. submitit installs, before our callable runs, a SIGUSR2 handler that
*immediately* calls the callable's ``checkpoint()``, requeues the job and ``sys.exit``s rank 0 - in the middle
of whatever step rank 0 was running, while the other ranks keep going (and block in their next collective).
Everything since the last periodic checkpoint would be lost. ``install_handlers()`` therefore replaces it by
the flag handler, and the loop stops at the next step boundary on all ranks together (``stop_requested`` is
agreed with an all-reduce MAX). submitit's handler is kept as a *fallback*: when the signal arrives before
this process ever called ``stop_requested()`` (an entry that never polls, e.g. an evaluation job, or a
training job still building its model), nothing unsaved can be lost, so submitit's requeue-immediately
behaviour is the right one and it is chained to.

Why the result stays correct. ``requeue_and_exit`` leaves through ``Preempted`` (a ``SystemExit``), which
submitit's job runner does not catch (it catches ``Exception``), so no result pickle is written by the
preempted run; the requeued job re-runs the same submitted pickle (same job id, same arguments, same output
directory), resumes from the latest checkpoint, and the final, uninterrupted run writes the one result that
``job.result()`` reads.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Callable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

#: exit code of a process that stopped on request (outside Slurm: rerun the same command to resume)
PREEMPTED_EXIT_CODE = 3

_flag = False
_signal_name: str | None = None
_polled = False
_installed: dict[int, object] = {}        # signum -> previous handler (restored by uninstall_handlers)
_fallback: dict[int, Callable] = {}       # signum -> handler to chain to before the first poll


class Preempted(SystemExit):
    """Raised by :func:`requeue_and_exit`: a clean stop after the checkpoint was saved (never an error)."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _default_signals() -> tuple[int, ...]:
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    usr = getattr(signal, name, signal.SIGUSR2)
    return tuple(dict.fromkeys((usr, signal.SIGTERM)))


def _on_signal(signum, frame):
    global _flag, _signal_name
    _flag = True
    _signal_name = signal.Signals(signum).name
    fallback = _fallback.get(signum)
    if fallback is not None and not _polled:
        fallback(signum, frame)  # nothing unsaved yet: submitit's requeue-now behaviour is fine


def install_handlers(signals: tuple[int, ...] | None = None, chain_submitit: bool = True) -> None:
    """Route ``signals`` (default SIGUSR2 - or $SUBMITIT_PREEMPT_SIGNAL - and SIGTERM) to the stop flag.

    Idempotent; main thread only (a no-op elsewhere). With ``chain_submitit``, a submitit handler found on a
    signal is kept as the fallback used before the first :func:`stop_requested` call (see module doc).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals or _default_signals():
        if sig in _installed:
            continue
        prev = signal.getsignal(sig)
        _installed[sig] = prev
        owner = getattr(getattr(prev, "__self__", None), "__class__", None)
        if chain_submitit and callable(prev) and owner is not None and "submitit" in owner.__module__ \
                and getattr(prev, "__name__", "") == "checkpoint_and_try_requeue":
            _fallback[sig] = prev
        signal.signal(sig, _on_signal)


def uninstall_handlers() -> None:
    """Restore the handlers that :func:`install_handlers` replaced and clear the state."""
    for sig, prev in list(_installed.items()):
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    _installed.clear()
    _fallback.clear()
    reset()


def reset() -> None:
    global _flag, _signal_name, _polled
    _flag, _signal_name, _polled = False, None, False


def request_stop(reason: str = "manual") -> None:
    """Set the flag from code (tests, or a loop that wants to stop and requeue itself)."""
    global _flag, _signal_name
    _flag, _signal_name = True, reason


def local_stop_flag() -> bool:
    """This process's flag, without communication."""
    return _flag


def stop_requested() -> bool:
    """True on every rank when any rank received a stop signal; call it on all ranks at the same step.

    One all-reduce (MAX) of a single int when a process group with more than one rank is initialised,
    otherwise just the local flag.
    """
    global _polled
    _polled = True
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return _flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    t = torch.tensor([1 if _flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def requeue_and_exit(requeue: bool | None = None) -> None:
    """Stop every rank cleanly after the checkpoint was saved; inside Slurm, rank 0 requeues the job first.

    Call it on all ranks (after ``stop_requested()`` returned True and the checkpoint is written). A barrier
    makes sure every rank finished saving before rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` (Slurm then
    stops the tasks and starts the same submitted job again, which resumes from the latest checkpoint). The
    process group is destroyed and :class:`Preempted` (a ``SystemExit`` with code
    :data:`PREEMPTED_EXIT_CODE`) is raised: no submitit result is written for this run. Outside Slurm
    (``requeue`` False) it only stops: rerun the same command to resume.
    """
    if requeue is None:
        requeue = in_slurm_job()
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else int(os.environ.get("RANK", "0"))
    if distributed and dist.get_world_size() > 1:
        dist.barrier()
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") and \
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" \
        or os.environ.get("SLURM_JOB_ID")
    if requeue and rank == 0:
        if not job_id:
            raise RuntimeError("requeue_and_exit(requeue=True) outside a Slurm job (SLURM_JOB_ID is not set)")
        print(f"[octo] stop requested ({_signal_name}): checkpoint saved, requeueing Slurm job {job_id}",
              flush=True)
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    from pretrain import distributed as _d

    _d.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    what = f"requeued Slurm job {job_id}" if requeue else "rerun the same command to resume"
    raise Preempted(f"stopped on {_signal_name or 'request'} after saving a checkpoint; {what}")
