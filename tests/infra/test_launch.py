"""pretrain.launch without Slurm: local multi-process launch, failure propagation, cluster choice, overrides."""
import argparse
import os
import signal
import stat

import pytest

from pretrain import launch as L
from pretrain import preemption


def _parse(argv):
    return L.add_launcher_args(argparse.ArgumentParser()).parse_args(argv)


# ---- entries (top level: pickled by reference into spawned processes) ---------------------------------------

def allreduce_entry(args):
    import torch
    import torch.distributed as dist

    from pretrain import distributed as D

    info = D.init_distributed()
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")}
    stop = [preemption.stop_requested()]
    if info.rank == 1:
        preemption.request_stop("test")  # only rank 1 sees the "signal"
    stop.append(preemption.stop_requested())
    out = {"sum": t.item(), "rank": info.rank, "world": info.world_size, "backend": info.backend, "env": env,
           "opts": list(args.opts), "output_dir": args.output_dir, "stop": stop}
    D.shutdown()
    return out


def failing_entry(args):
    from pretrain import distributed as D

    info = D.init_distributed()
    if info.rank == 1:
        raise ValueError("rank one exploded on purpose")
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1))  # rank 0 blocks here until the launcher kills it
    return "unreachable"


def stopping_entry(args):
    """Loops until asked to stop (the test signals the launcher), then saves a marker and stops."""
    import time

    from pretrain import distributed as D

    info = D.init_distributed()
    open(os.path.join(args.output_dir, f"ready.{info.rank}"), "w").close()
    for _ in range(3000):
        if preemption.stop_requested():
            open(os.path.join(args.output_dir, f"saved.{info.rank}"), "w").close()
            preemption.requeue_and_exit()
        time.sleep(0.01)
    return "never stopped"


def single_entry(args):
    return {"pid": os.getpid(), "opts": list(args.opts)}


# ---- tests -------------------------------------------------------------------------------------------------

def test_local_two_processes_allreduce_overrides_and_agreed_stop(tmp_path):
    args = _parse(["--cluster", "local", "--nodes", "2", "--ngpus", "1", "--output-dir", str(tmp_path / "run"),
                   "optim.epochs=3", "train.seed=7"])
    out = L.launch(allreduce_entry, args)
    assert out["sum"] == 3.0  # 1 + 2 across two ranks
    assert out["rank"] == 0 and out["world"] == 2 and out["backend"] == "gloo"
    assert out["env"] == {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                          "MASTER_ADDR": "127.0.0.1"}
    assert out["opts"] == ["optim.epochs=3", "train.seed=7"]  # overrides reach every process
    assert out["output_dir"] == str((tmp_path / "run").absolute())
    assert out["stop"] == [False, True]  # only rank 1 saw a signal; stop_requested() is True on rank 0 too
    assert os.environ.get("RANK") != "1" and os.environ.get("WORLD_SIZE") != "2"  # launcher env restored


def test_failing_rank_propagates_traceback(tmp_path):
    args = _parse(["--cluster", "local", "--ngpus", "2", "--output-dir", str(tmp_path)])
    with pytest.raises(L.LaunchError) as e:
        L.launch(failing_entry, args)
    assert "rank 1 of 2 failed" in str(e.value)
    assert "rank one exploded on purpose" in str(e.value) and "ValueError" in str(e.value)


def test_single_process_runs_in_process(tmp_path):
    args = _parse(["--cluster", "local", "--ngpus", "1", "--output-dir", str(tmp_path), "a.b=1"])
    out = L.launch(single_entry, args)
    assert out == {"pid": os.getpid(), "opts": ["a.b=1"]}
    assert signal.getsignal(signal.SIGUSR2) is not preemption._on_signal  # handlers restored afterwards


def test_stop_signal_reaches_all_ranks_and_stops_cleanly(tmp_path):
    import threading
    import time

    args = _parse(["--cluster", "local", "--ngpus", "2", "--output-dir", str(tmp_path)])

    def send_when_ready():
        for _ in range(3000):
            if all((tmp_path / f"ready.{r}").exists() for r in range(2)):
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR2)  # the launcher forwards it to every rank

    threading.Thread(target=send_when_ready, daemon=True).start()
    with pytest.raises(preemption.Preempted) as e:
        L.launch(stopping_entry, args)
    assert e.value.code == preemption.PREEMPTED_EXIT_CODE
    assert "rerun the same command to resume" in str(e.value)
    assert (tmp_path / "saved.0").exists() and (tmp_path / "saved.1").exists()


def test_auto_chooses_local_without_sinfo(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo/sbatch here
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert L.resolve_cluster(_parse([])) == "local"
    with pytest.raises(L.LaunchError, match="sbatch"):
        L.resolve_cluster(_parse(["--cluster", "slurm"]))


def test_auto_uses_slurm_only_outside_a_job(tmp_path, monkeypatch):
    fake = tmp_path / "sinfo"
    fake.write_text("#!/bin/sh\necho debug\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert L.resolve_cluster(_parse([])) == "slurm"
    assert L.resolve_cluster(_parse(["--local"])) == "local"
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # already inside a Slurm job (salloc / sbatch script)
    assert L.resolve_cluster(_parse([])) == "local"
    fake.write_text("#!/bin/sh\nexit 1\n")  # a sinfo that cannot reach the controller
    monkeypatch.delenv("SLURM_JOB_ID")
    assert L.resolve_cluster(_parse([])) == "local"


def test_defaults_and_slurm_parameters(monkeypatch):
    monkeypatch.setattr(L, "cluster_has_gpus", lambda partition=None: False)
    args = _parse(["--nodes", "2", "--ngpus", "4", "--partition", "p", "--exclude", "n[1-2]", "k=v"])
    assert args.timeout == 2800 and args.signal_delay == 120 and args.opts == ["k=v"]
    p = L.slurm_parameters(args)
    assert p["nodes"] == 2 and p["tasks_per_node"] == 4 and "gpus_per_node" not in p
    assert p["slurm_partition"] == "p" and p["slurm_exclude"] == "n[1-2]" and p["mem_gb"] == 0
    monkeypatch.setattr(L, "cluster_has_gpus", lambda partition=None: True)
    assert L.slurm_parameters(args)["gpus_per_node"] == 4
    assert L.slurm_parameters(_parse(["--ngpus", "4", "--gpus-per-node", "0"])).get("gpus_per_node") is None


def test_default_output_dir_and_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _parse(["--config-file", "configs/tiny_cpu.yaml"])
    out = L.resolve_output_dir(single_entry, args)
    assert out.startswith(str(tmp_path / "outputs" / "octo-tiny_cpu-")) and os.path.isdir(out)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a regular file instead
        (tmp_path / "file").write_text("x")
        ro = tmp_path / "file" / "sub"
    with pytest.raises(L.LaunchError, match="--output-dir .* is not writable"):
        L.launch(single_entry, _parse(["--local", "--output-dir", str(ro / "x")]))
    with pytest.raises(L.LaunchError, match="--ngpus"):
        L.launch(single_entry, _parse(["--local", "--ngpus", "0", "--output-dir", str(tmp_path)]))
    with pytest.raises(L.LaunchError, match="key=value"):
        L.launch(single_entry, _parse(["--local", "--output-dir", str(tmp_path), "notanoverride"]))
    with pytest.raises(L.LaunchError, match="--signal-delay"):
        L.launch(single_entry, _parse(["--local", "--timeout", "1", "--signal-delay", "90",
                                       "--output-dir", str(tmp_path)]))


def test_master_port_rule_matches_distributed():
    assert L.master_port_for_job("123456") == 20000 + 123456 % 20000
