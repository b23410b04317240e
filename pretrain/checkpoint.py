"""Crash-safe, resharding training checkpoints (``torch.distributed.checkpoint``) and backbone export.

Layout of ``<directory>`` (``Checkpointer``)::

    iter_00001250/            a complete checkpoint (renamed from tmp-iter_00001250-<random> when done)
        .metadata, *.distcp   DCP: model and optimizer state, resharded on load (any world size)
        rng_rank_00000.pt     this rank's python/numpy/torch/cuda RNG states (weights-only torch.save)
        extra.json            plain training state given to save(extra=...) (tensors -> extra_tensors.pt)
        meta.json             iteration, world size, names of the saved models/optimizers
        COMPLETE              written last, before the rename
    latest                    "iter_00001250" (written with tmp + os.replace; informative only)

DCP keys: the state saved is ``{<model name>: get_model_state_dict(model), <optimizer name>:
get_optimizer_state_dict(model, optimizer)}``, flattened with dots. The DINOv2 loop saves
``models={"model": meta_arch}``, so the teacher backbone lives under ``model.teacher.backbone.<key>`` (e.g.
``model.teacher.backbone.blocks.0.attn.qkv.weight``); FSDP/compile wrapper names never appear in keys.

Crash safety: everything is written into ``tmp-*``; only a directory holding ``COMPLETE`` and named ``iter_*``
counts. :meth:`Checkpointer.latest` scans for the highest complete ``iter_*`` (ignoring ``tmp-*``, trash and
incomplete directories), so a kill at any moment, or a failed save (disk full), leaves the previous checkpoint
as the latest one. A failed save raises :class:`CheckpointError` naming the path, the errno and the intact
previous checkpoint, and removes its tmp directory.

Nothing here unpickles arbitrary objects: DCP tensors, ``torch.load(weights_only=True)``, JSON and
safetensors only.
"""
from __future__ import annotations

import contextlib
import errno as errno_mod
import json
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn

from . import distributed as D

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
ITER_RE = re.compile(r"^iter_(\d{8,})$")
WRAPPER_NAMES = ("module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


class CheckpointError(RuntimeError):
    pass


def _errors() -> tuple:
    """Exceptions a save/load may raise; DCP's CheckpointException derives from BaseException."""
    from torch.distributed.checkpoint import CheckpointException

    return (Exception, CheckpointException)


# ----------------------------------------------------------------------------------------------------------
# small file helpers
def _fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write_text(path: str, text: str):
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        _write_bytes(tmp, text.encode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _torch_save(obj, path: str):
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"could not read {path!r} as a weights-only file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); the file is truncated/corrupt or "
                              "contains arbitrary Python objects, which octo refuses to unpickle") from e


@contextlib.contextmanager
def _quiet_single_process(force: bool = False):
    """Silence DCP's "assuming the intent is to save/load in a single process" warning: it is intended."""
    with warnings.catch_warnings():
        if force or not D.is_dist():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
        yield


def _find_oserror(exc: BaseException) -> OSError | None:
    """The first OSError in ``exc``'s cause/context chain or inside a DCP ``CheckpointException``."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            for v in failures.values():
                todo.append(v[0] if isinstance(v, tuple) else v)
        todo += [e.__cause__, e.__context__]
    return None


def check_writable(directory: str) -> str:
    """Create ``directory`` if needed and check that files can be written there; raise a clear error early."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".octo-write-test-", dir=directory)
        os.write(fd, b"ok")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(
            f"output directory {directory!r} is not writable ([Errno {e.errno}] {e.strerror}); choose a writable "
            "location (train.output_dir / --output-dir) or fix its permissions") from e
    return directory


# ----------------------------------------------------------------------------------------------------------
# extra (plain data) and RNG states
def _encode_extra(obj, tensors: dict, where: str = "extra"):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{where}: dict keys must be strings for JSON, got {bad[:3]}")
        return {k: _encode_extra(v, tensors, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_extra(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"{where} has type {type(obj).__name__}: checkpoint extra state must be plain data "
                          "(dict/list/str/int/float/bool/None/tensors); convert it (e.g. .state_dict()) first")


def _decode_extra(obj, tensors: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _decode_extra(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_extra(v, tensors) for v in obj]
    return obj


def rng_state() -> dict:
    """This process's RNG states as weights-only-loadable data."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [version, list(keys), gauss],
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def fallback_seed(iteration: int, rank: int) -> int:
    """Seed for a rank that has no saved RNG state (resuming on more ranks than were saved)."""
    return (int(iteration) * 1_000_003 + 7919 * int(rank) + 1) % (2 ** 32)


def _seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ----------------------------------------------------------------------------------------------------------
# state-dict assembly
def _owner_model(optimizer, models: dict, oname: str) -> nn.Module:
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for m in models.values():
        mids = {id(p) for p in m.parameters()}
        if ids <= mids:
            return m
    raise CheckpointError(f"optimizer {oname!r}: no model in models={list(models)} holds all its parameters; "
                          "pass the module the optimizer was built from")


def _training_state(models: dict, optimizers: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    clash = set(models) & set(optimizers)
    if clash:
        raise CheckpointError(f"models and optimizers share names {sorted(clash)}; use distinct names")
    bad = [n for n in list(models) + list(optimizers) if not n or "." in n]
    if bad:
        raise CheckpointError(f"checkpoint names {bad} must be non-empty and contain no '.'")
    state = {name: get_model_state_dict(m) for name, m in models.items()}
    for oname, opt in optimizers.items():
        state[oname] = get_optimizer_state_dict(_owner_model(opt, models, oname), opt)
    return state


def _rank_failed(failed: bool) -> bool:
    """True on every rank if any rank failed (a collective; no-op without a process group)."""
    if not D.is_dist():
        return failed
    flag = torch.tensor([1.0 if failed else 0.0])
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _iter_of(path: str) -> int | None:
    m = ITER_RE.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def is_complete(path: str) -> bool:
    return _iter_of(path) is not None and os.path.isfile(os.path.join(path, COMPLETE)) and \
        os.path.isfile(os.path.join(path, ".metadata"))


def resolve_checkpoint(path: str) -> str:
    """A complete ``iter_*`` directory from an ``iter_*`` path, a checkpoint directory or a training output dir."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist (expected an iter_* directory, a "
                                "checkpoints directory or a training output directory)")
    if _iter_of(path) is not None:
        if not is_complete(path):
            raise CheckpointError(f"checkpoint {path!r} is incomplete (no {COMPLETE} marker or .metadata): the "
                                  "save was interrupted; use an earlier iter_* directory")
        return path
    for d in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(d):
            found = Checkpointer(d, create=False).latest()
            if found is not None:
                return found
    raise CheckpointError(f"no complete checkpoint (iter_*/{COMPLETE}) found in {path!r} or {path!r}/checkpoints")


# ----------------------------------------------------------------------------------------------------------
class Checkpointer:
    """Periodic, crash-safe DCP checkpoints in ``directory``, keeping the last ``max_to_keep`` (<=0: all)."""

    def __init__(self, directory: str, max_to_keep: int = 3, create: bool = True):
        self.directory = directory
        self.max_to_keep = max_to_keep
        if create and D.is_main_process():
            os.makedirs(directory, exist_ok=True)

    # --- discovery ---------------------------------------------------------------------------------
    def list(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            p = os.path.join(self.directory, name)
            if _iter_of(p) is not None and is_complete(p):
                found.append((_iter_of(p), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> str | None:
        """The complete checkpoint with the highest iteration (the ``latest`` file is informative only)."""
        done = self.list()
        return done[-1] if done else None

    # --- save ---------------------------------------------------------------------------------------
    def save(self, iteration: int, models: dict, optimizers: dict | None = None, extra: dict | None = None) -> str:
        import torch.distributed.checkpoint as dcp

        optimizers = optimizers or {}
        rank, world = D.get_rank(), D.get_world_size()
        final = os.path.join(self.directory, f"iter_{int(iteration):08d}")
        previous = self.latest()
        intact = (f"previous checkpoint {previous} is intact" if previous else "no previous checkpoint exists")
        tensors: dict = {}
        extra_json = json.dumps(_encode_extra(dict(extra or {}), tensors), indent=1)  # fail early, all ranks
        tmp = D.broadcast_object(os.path.join(self.directory, f"tmp-iter_{int(iteration):08d}-{secrets.token_hex(4)}"))
        error = None
        try:
            os.makedirs(tmp, exist_ok=True)
            state = _training_state(models, optimizers)
            with _quiet_single_process():
                dcp.save(state, checkpoint_id=tmp, no_dist=not D.is_dist())
            _torch_save(rng_state(), os.path.join(tmp, f"rng_rank_{rank:05d}.pt"))
        except _errors() as e:  # reported below with context, on every rank
            error = e
        if _rank_failed(error is not None):
            self._fail(iteration, tmp, error, intact, rank)
        if rank == 0:
            try:
                if tensors:
                    _torch_save(tensors, os.path.join(tmp, "extra_tensors.pt"))
                _write_bytes(os.path.join(tmp, "extra.json"), extra_json.encode())
                meta = {"iteration": int(iteration), "world_size": world, "models": list(models),
                        "optimizers": list(optimizers), "time": time.time(), "torch": torch.__version__}
                _write_bytes(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1).encode())
                _write_bytes(os.path.join(tmp, COMPLETE), b"")
                _fsync_dir(tmp)
                self._publish(tmp, final)
            except _errors() as e:
                error = e
        err_msg = D.broadcast_object(None if error is None else repr(error))
        if err_msg is not None:
            self._fail(iteration, tmp, error or CheckpointError(err_msg), intact, rank)
        if rank == 0:
            try:
                _atomic_write_text(os.path.join(self.directory, LATEST), os.path.basename(final) + "\n")
                self._prune()
            except OSError as e:  # the new checkpoint is complete; latest() does not need the pointer
                logger.warning("checkpoint %s is complete but updating %s/latest or pruning failed: %s",
                               final, self.directory, e)
        D.barrier()
        return final

    def _publish(self, tmp: str, final: str):
        trash = None
        if os.path.exists(final):  # re-saving an iteration: move the old one aside first
            trash = os.path.join(self.directory, f"trash-{os.path.basename(final)}-{secrets.token_hex(4)}")
            os.rename(final, trash)
        try:
            os.rename(tmp, final)
        except OSError:
            if trash:  # put the old copy of this iteration back
                os.rename(trash, final)
            raise
        _fsync_dir(self.directory)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)

    def _fail(self, iteration, tmp, error, intact, rank):
        D.barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        ose = _find_oserror(error) if error is not None else None
        if ose is not None:
            code = errno_mod.errorcode.get(ose.errno, str(ose.errno)) if ose.errno else "?"
            why = f"[Errno {ose.errno} {code}] {ose.strerror or ose}" + (f" ({ose.filename})" if ose.filename else "")
        else:
            why = f"{type(error).__name__}: {error}" if error is not None else "another rank failed"
        raise CheckpointError(f"saving checkpoint of iteration {iteration} to {tmp} failed: {why}; "
                              f"the partial directory was removed and the {intact}") from error

    def _prune(self):
        for name in os.listdir(self.directory):
            if name.startswith(("tmp-iter_", "trash-")):  # left behind by a killed save
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        if self.max_to_keep and self.max_to_keep > 0:
            for old in self.list()[: -self.max_to_keep]:
                shutil.rmtree(old, ignore_errors=True)

    # --- load ---------------------------------------------------------------------------------------
    def load(self, path: str, models: dict, optimizers: dict | None = None) -> dict:
        """Restore ``models``/``optimizers`` in place from ``path`` (any world size); returns ``extra``.

        RNG: a rank ``r`` restores ``rng_rank_r.pt`` when the checkpoint has it; ranks beyond the saved world
        size are seeded with :func:`fallback_seed` (iteration, rank) for python/numpy/torch.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        optimizers = optimizers or {}
        path = resolve_checkpoint(path)
        meta = _read_json(os.path.join(path, "meta.json"))
        _check_model_keys(path, models)
        state = _training_state(models, optimizers)
        _drop_absent_optimizer_state(path, state, optimizers)
        try:
            with _quiet_single_process():
                dcp.load(state, checkpoint_id=path, no_dist=not D.is_dist())
        except _errors() as e:
            raise _read_failure(path, e, "load") from e
        for name, m in models.items():
            set_model_state_dict(m, state[name])
        for oname, opt in optimizers.items():
            # strict=False: parameters that never had a gradient have no saved state (and get none)
            set_optimizer_state_dict(_owner_model(opt, models, oname), opt, state[oname],
                                     options=StateDictOptions(strict=False))
        rng_file = os.path.join(path, f"rng_rank_{D.get_rank():05d}.pt")
        if os.path.isfile(rng_file):
            set_rng_state(_torch_load(rng_file))
        else:
            _seed_all(fallback_seed(meta.get("iteration", 0), D.get_rank()))
        tensors = _torch_load(os.path.join(path, "extra_tensors.pt")) \
            if os.path.isfile(os.path.join(path, "extra_tensors.pt")) else {}
        return _decode_extra(_read_json(os.path.join(path, "extra.json")), tensors)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not read {path!r}: {e}") from e


def _tensor_keys(path: str) -> dict:
    """``{flattened DCP key: TensorStorageMetadata}`` of a checkpoint, without a process group."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        md = FileSystemReader(path).read_metadata()
    except Exception as e:
        raise CheckpointError(f"could not read the DCP metadata of {path!r} ({type(e).__name__}: {e}); the "
                              "checkpoint is truncated or not an octo checkpoint") from e
    return {k: v for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _short_data_files(path: str) -> list[str]:
    """``["__0_0.distcp: 1000 bytes, the metadata expects >= 1102290", ...]``: DCP data files shorter than the
    byte ranges the checkpoint's metadata records for them (a truncated copy or an interrupted write)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(path).read_metadata().storage_data or {}
    except Exception:  # noqa: BLE001 - diagnosis only; the caller reports the original error
        return []
    need: dict = {}
    for info in storage.values():
        rel = getattr(info, "relative_path", None)
        if rel is not None:
            need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    short = []
    for rel, n in sorted(need.items()):
        f = os.path.join(path, rel)
        size = os.path.getsize(f) if os.path.isfile(f) else None
        if size is None:
            short.append(f"{rel}: missing, the metadata expects {n} bytes")
        elif size < n:
            short.append(f"{rel}: {size} bytes, the metadata expects >= {n}")
    return short


def _read_failure(path: str, e: BaseException, what: str = "load") -> CheckpointError:
    """A :class:`CheckpointError` for a failed DCP read of ``path`` that says why (truncated files) and what to do."""
    short = _short_data_files(path)
    if short:
        why = "it is truncated/corrupt: " + "; ".join(short)
    else:
        cause = _find_root_cause(e)
        why = f"{type(cause).__name__}: {str(cause).strip() or '(no message)'} (a corrupt data file?)"
    older = [p for p in Checkpointer(os.path.dirname(os.path.normpath(path)), create=False).list()
             if os.path.normpath(p) != os.path.normpath(path)]
    hint = (f"; earlier complete checkpoint(s): {older} - to resume from {older[-1]}, move {path} out of the "
            "checkpoints directory" if older else "")
    return CheckpointError(f"could not {what} checkpoint {path!r}: {why}{hint}")


def _find_root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc`` (through DCP's per-rank ``failures`` and the cause chain)."""
    e, seen = exc, set()
    while id(e) not in seen:
        seen.add(id(e))
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict) and failures:
            v = next(iter(failures.values()))
            nxt = v[0] if isinstance(v, tuple) else v
        else:
            nxt = e.__cause__
        if not isinstance(nxt, BaseException):
            break
        e = nxt
    return e


def _all_keys(path: str) -> set:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(path).read_metadata().state_dict_metadata)


def _drop_absent_optimizer_state(path: str, state: dict, optimizers: dict):
    """Parameters without optimizer state in the checkpoint (never had a gradient) get none after loading."""
    ckpt = _all_keys(path)
    for oname in optimizers:
        per_param = state[oname].get("state", {})
        for fqn in list(per_param):
            stats = per_param[fqn]
            if not all(f"{oname}.state.{fqn}.{k}" in ckpt for k in stats):
                del per_param[fqn]


def _check_model_keys(path: str, models: dict):
    """Strict key check of every model against the checkpoint, with a readable report."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    ckpt = set(_tensor_keys(path))
    problems = []
    for name, m in models.items():
        want = {f"{name}.{k}" for k in get_model_state_dict(m)}
        have = {k for k in ckpt if k.startswith(f"{name}.")}
        missing, unexpected = sorted(want - have), sorted(have - want)
        if missing:
            problems.append(f"  {name}: missing in checkpoint ({len(missing)}): {missing[:8]}")
        if unexpected:
            problems.append(f"  {name}: unexpected in checkpoint ({len(unexpected)}): {unexpected[:8]}")
    if problems:
        raise CheckpointError(f"checkpoint {path!r} does not match the model (strict):\n" + "\n".join(problems) +
                              "\n  check student.arch / the model config you resume with")


# ----------------------------------------------------------------------------------------------------------
# plain state dicts: read a backbone out of a checkpoint, export to safetensors
def clean_key(key: str) -> str:
    """Drop wrapper components (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.``, ...) from a key."""
    return ".".join(p for p in key.split(".") if p not in WRAPPER_NAMES)


def load_model_state_from_checkpoint(path: str, prefer: str = "teacher") -> dict:
    """Plain CPU state dict of ``<model>.<prefer>.backbone`` from a checkpoint, without a process group.

    ``path``: an ``iter_*`` directory, a checkpoints directory or a training output directory (its latest
    checkpoint). Falls back to ``<model>.<prefer>.*``, then ``<model>.backbone.*``, then the whole model.
    """
    import torch.distributed.checkpoint as dcp

    path = resolve_checkpoint(path)
    meta = _read_json(os.path.join(path, "meta.json"))
    keys = _tensor_keys(path)
    names = meta.get("models") or ["model"]
    mname = "model" if "model" in names else names[0]
    prefix = None
    for cand in (f"{mname}.{prefer}.backbone.", f"{mname}.{prefer}.", f"{mname}.backbone.", f"{mname}."):
        if any(k.startswith(cand) for k in keys):
            prefix = cand
            break
    if prefix is None:
        raise CheckpointError(f"checkpoint {path!r} holds no tensors under {mname!r}")
    sd = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in keys.items() if k.startswith(prefix)}
    try:
        with _quiet_single_process(force=True):
            dcp.load(sd, checkpoint_id=path, no_dist=True)
    except _errors() as e:
        raise _read_failure(path, e, "read") from e
    return {clean_key(k[len(prefix):]): v for k, v in sd.items()}


def read_safetensors(path: str) -> dict:
    """``safetensors.torch.load_file`` with an error that names the file and the likely cause."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError: truncated / not a safetensors file
        raise CheckpointError(f"could not read {path!r} as safetensors ({type(e).__name__}: {e}); the file is "
                              "truncated (interrupted copy/download?) or not a .safetensors file") from e


def save_safetensors(state_dict: dict, path: str, metadata: dict | None = None) -> str:
    """Write ``state_dict`` (tensors) to ``path`` atomically (tmp file + os.replace)."""
    from safetensors.torch import save_file

    out = {clean_key(k): v.detach().cpu().contiguous().clone() for k, v in state_dict.items()
           if isinstance(v, torch.Tensor)}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
    try:
        save_file(out, tmp, metadata={k: str(v) for k, v in (metadata or {"format": "pt"}).items()})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"could not write {path!r}: [Errno {e.errno}] {e.strerror}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_backbone(module: nn.Module, path: str) -> str:
    """Gather ``module``'s full state dict (collective when sharded) and write it on rank 0 as safetensors.

    Keys are plain DINOv2-style names (``blocks.0.attn.qkv.weight``), loadable strictly by
    ``pretrain.models.load_pretrained``. Call on every rank.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if D.is_main_process():
        save_safetensors(sd, path)
    D.barrier()
    return path
