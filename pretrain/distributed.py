"""One initialisation path for a Slurm task, a torchrun environment and a single process.

``init_distributed()`` detects, in order: a complete torchrun-style environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT; LOCAL_RANK optional) - which is also what octo's local launcher and submitit
setups export; a Slurm task (``SLURM_PROCID`` inside ``srun``/submitit: master = first host of
``SLURM_JOB_NODELIST``, port derived from the job id); otherwise a single process without a process group.
Backend: nccl when CUDA is available, gloo otherwise. Every collective helper below also works without an
initialised process group (world size 1), so the same code runs on a laptop.
"""
from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "none"
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO: DistInfo | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist such as ``node[1-2,5]`` or ``a1,b2``."""
    m = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _env_from_slurm() -> dict | None:
    if "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return None
    job_id = int(os.environ.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ["SLURM_NTASKS"],
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "MASTER_ADDR": first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")),
        "MASTER_PORT": str(20000 + job_id % 20000),
    }


def init_distributed(backend: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Initialise (idempotently) and return this process's :class:`DistInfo`."""
    global _INFO
    if _INFO is not None:
        return _INFO
    env = None
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env["LOCAL_RANK"] = os.environ.get("LOCAL_RANK", "0")
        env["LOCAL_WORLD_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", "1")
    elif any(k in os.environ for k in ("RANK", "WORLD_SIZE")) and "SLURM_PROCID" not in os.environ:
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        raise RuntimeError(f"incomplete torchrun environment: {missing} not set (set all four, or none)")
    else:
        env = _env_from_slurm()
    if env is None or int(env["WORLD_SIZE"]) == 1 and not dist.is_available():
        _INFO = DistInfo(device=torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
        return _INFO
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env["LOCAL_RANK"])
    for k, v in env.items():
        os.environ.setdefault(k, str(v))
    use_cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                                rank=rank, world_size=world, timeout=datetime.timedelta(minutes=timeout_minutes))
    _INFO = DistInfo(rank, world, local_rank, int(env.get("LOCAL_WORLD_SIZE", 1)),
                     backend if world > 1 else "none", device)
    return _INFO


def shutdown():
    global _INFO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank along ``dim`` (rank order)."""
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
