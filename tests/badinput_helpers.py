"""Helpers of tests/test_bad_input.py: run the real launchers as subprocesses (several at once), build bad inputs."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny_cpu.yaml")
# the encoder of configs/tiny_cpu.yaml, as --arch-kwargs of the evaluation launchers
TINY_ARCH = ["--arch", "vit_small", "--arch-kwargs", "embed_dim=32", "depth=2", "num_heads=2", "patch_size=8",
             "img_size=32"]
KNN_DATA = ["--train-dataset", "synthetic:n=8:size=32:classes=2", "--test-dataset", "synthetic:n=4:size=32:classes=2",
            "--resize", "32", "--crop", "32", "--batch-size", "4", "--num-workers", "0"]


def launcher(name: str, *args: str) -> list[str]:
    """Command line of ``launchers/<name>.py``; every training/eval launcher call passes ``--local`` itself."""
    return [sys.executable, os.path.join(REPO, "launchers", f"{name}.py"), *args]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


class Runner:
    """A small pool of launcher subprocesses (the machine has 2 cores; most bad-input runs fail in seconds)."""

    def __init__(self, max_parallel: int = 4, timeout: float = 400):
        self.pool = ThreadPoolExecutor(max_workers=max_parallel)
        self.timeout = timeout
        self.futures = {}

    def submit(self, name: str, cmd: list[str]):
        self.futures[name] = self.pool.submit(_run, cmd, self.timeout)
        return self.futures[name]

    def results(self) -> dict:
        out = {name: f.result() for name, f in self.futures.items()}
        self.pool.shutdown()
        return out


def describe(r: subprocess.CompletedProcess) -> str:
    return f"exit code {r.returncode}\n--- stdout tail\n{r.stdout[-2000:]}\n--- stderr tail\n{r.stderr[-4000:]}"


def write_images(root: str, n_good: int, bad: dict) -> None:
    """``n_good`` random JPEGs in ``root/c0`` and ``root/c1`` plus the files ``bad`` (relative path -> bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n_good):
        d = os.path.join(root, f"c{i % 2}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(os.path.join(d, f"{i}.jpg"))
    for rel, data in bad.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)


def truncate_half(path: str) -> int:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size // 2


def snapshot(directory: str) -> dict:
    """``{relative path: (size, mtime_ns)}`` of every file below ``directory``."""
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, directory)] = (st.st_size, st.st_mtime_ns)
    return out


class Payload:
    """Unpickling this object creates the file ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_pth(path: str, marker: str, state_dict: dict) -> str:
    """A ``.pth`` that looks like a checkpoint (a real state dict under ``model``) and carries the payload."""
    import torch

    torch.save({"model": state_dict, "args": Payload(marker)}, path)
    return path
