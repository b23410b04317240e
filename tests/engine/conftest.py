import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny_cpu.yaml")


@pytest.fixture
def fresh_dist():
    """Each in-process run starts without a cached distributed state."""
    from pretrain import distributed as D

    D.shutdown()
    yield
    D.shutdown()


def run_launcher(*args, timeout=600):
    cmd = [sys.executable, os.path.join(REPO, "launchers", "train_dinov2.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
