"""Training metric logging: smoothed meters, a periodic console line, ``metrics.jsonl`` and optional TensorBoard.

Only rank 0 prints and writes files; every rank may call ``update``. Example::

    logger = MetricLogger(output_dir="out", tensorboard=True)
    for it, batch in logger.log_every(loader, print_freq=10, header="Train", n_iterations=1000,
                                      start_iteration=0, images_per_iter=global_batch):
        ...
        logger.update(total_loss=loss.item(), lr=lr)

Each console line: ``header [it/total] eta: .. <meter: median (global avg)> .. time: .. data: .. img/s: .. mem: ..``.
Each JSONL record: ``iteration, iter_time, data_time, img_per_s, max_mem_mb`` and every meter's window median.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections import defaultdict, deque
from typing import Callable, Iterable

import torch
import torch.distributed as dist


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def peak_memory_mb() -> float:
    """Peak CUDA memory allocated (MiB) when CUDA is in use, else the process's current RSS (MiB)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil
    return psutil.Process().memory_info().rss / 2**20


class SmoothedValue:
    """Window (default 20) of recent values plus a running total for the global average."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})"):
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1):
        value = float(value)
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self):
        """All-reduce count and total so ``global_avg`` covers every rank (the window stays local)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), float(t[1].item())

    @property
    def median(self) -> float:
        if not self.deque:
            return float("nan")
        s = sorted(self.deque)
        n = len(s)
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

    @property
    def avg(self) -> float:
        return sum(self.deque) / len(self.deque) if self.deque else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else float("nan")

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else float("nan")

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max,
                               value=self.value)


class MetricLogger:
    def __init__(self, delimiter: str = "  ", output_dir: str | None = None, tensorboard: bool = False,
                 window_size: int = 20, log_fn: Callable[[str], None] | None = None,
                 jsonl_name: str = "metrics.jsonl"):
        self.meters: dict[str, SmoothedValue] = defaultdict(lambda: SmoothedValue(window_size))
        self.delimiter = delimiter
        self.log_fn = log_fn or (lambda s: print(s, flush=True))
        self.main = is_main_process()
        self.jsonl_path = None
        self.tb = None
        if self.main and output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
            self.jsonl_path = os.path.join(output_dir, jsonl_name)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))

    def update(self, **kwargs):
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if not isinstance(v, (float, int)):
                raise TypeError(f"MetricLogger.update: meter {k!r} must be a number or 1-element tensor, got {type(v)}")
            self.meters[k].update(v)

    def add_meter(self, name: str, meter: SmoothedValue):
        self.meters[name] = meter

    def __getattr__(self, attr):
        meters = self.__dict__.get("meters")
        if meters is not None and attr in meters:
            return meters[attr]
        raise AttributeError(f"'MetricLogger' has no attribute {attr!r}")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self):
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def write(self, iteration: int, record: dict):
        """Append ``record`` (plus the iteration) to the JSONL file and TensorBoard (rank 0 only)."""
        if not self.main:
            return
        record = {"iteration": int(iteration), **record}
        if self.jsonl_path is not None:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, int(iteration))
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def log_every(self, iterable: Iterable, print_freq: int = 10, header: str = "",
                  n_iterations: int | None = None, start_iteration: int = 0, images_per_iter: int | None = None):
        """Yield items of ``iterable``; every ``print_freq`` iterations (and at the last) log a line + a record.

        Stops after ``n_iterations`` (total, counting from 0) when given; ``start_iteration`` is where a
        resumed run starts. ``images_per_iter`` (e.g. the global batch) enables the img/s column.
        """
        if n_iterations is None:
            n_iterations = start_iteration + len(iterable)  # type: ignore[arg-type]
        iter_time, data_time = SmoothedValue(), SmoothedValue()
        it = start_iteration
        end = time.time()
        start = end
        width = len(str(n_iterations))
        for obj in iterable:
            if it >= n_iterations:
                break
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if (it % print_freq == 0 or it == n_iterations - 1) and self.main:
                self._emit(it, n_iterations, header, iter_time, data_time, images_per_iter, width)
            it += 1
            end = time.time()
        if self.main and it > start_iteration:
            total = time.time() - start
            self.log_fn(f"{header} Total time: {datetime.timedelta(seconds=int(total))} "
                        f"({total / (it - start_iteration):.4f} s / it)")

    def _emit(self, it, n_iterations, header, iter_time, data_time, images_per_iter, width):
        eta = datetime.timedelta(seconds=int(iter_time.global_avg * (n_iterations - it - 1)))
        mem = peak_memory_mb()
        parts = [f"{header} [{it:>{width}}/{n_iterations}]", f"eta: {eta}", str(self),
                 f"time: {iter_time.median:.4f}", f"data: {data_time.median:.4f}"]
        record = {"iter_time": iter_time.median, "data_time": data_time.median, "max_mem_mb": round(mem, 1)}
        if images_per_iter:
            ips = images_per_iter / max(iter_time.median, 1e-12)
            parts.append(f"img/s: {ips:.1f}")
            record["img_per_s"] = ips
        parts.append(f"mem: {mem:.0f}MB")
        self.log_fn(self.delimiter.join(p for p in parts if p))
        record.update({k: m.median for k, m in self.meters.items()})
        self.write(it, record)
