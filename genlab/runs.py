"""The run directory: one checkpoint format for every model family.

    runs/NAME/
      config.json         family, hyper-parameters, data fingerprint, genlab version
      model.safetensors   weights (never a pickle); metadata records the step
      tokenizer.json      LM runs: the HF tokenizers file
      train_state.pt      optimizer, schedule position, step, RNG states (loaded with weights_only=True)
      metrics.csv         step, split, losses, lr, throughput (plus TensorBoard events in tb/)
      samples/            what the run generated while training

Every file is written atomically (temp file, fsync, rename). A checkpoint is two files, so it
is committed like a tiny journal: both temp files are made durable first, then train_state.pt
is renamed, then model.safetensors. If a kill lands between the two renames, the next load
finds a complete model temp file whose step matches train_state.pt and rolls it forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import genlab
from genlab.errors import RunError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.csv"


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in blocks (weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
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


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all. The temporary file's name is unique to this writer: two
    processes filling the same shared cache entry (two trainings on one new folder) must not rename
    each other's file away."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # (not mkstemp: its files are private to the owner, and these are outputs and shared caches)
    name = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(name, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _durable(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP/FSDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared (tied) tensors stored once, under their first name."""
    seen: set[int] = set()
    out = {}
    for name, t in unwrap(model).state_dict().items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def read_config(run: str | Path, family: str | None = None) -> dict:
    """config.json of a run, with a clear error for a missing, corrupted or other-family run."""
    run = Path(run)
    if not run.exists():
        raise RunError(f"run '{run}' does not exist; train one with `genlab train ...` or check the path")
    if not run.is_dir():
        raise RunError(f"'{run}' is not a run directory (expected a folder with config.json)")
    path = run / CONFIG
    if not path.exists():
        raise RunError(f"'{run}' is not a genlab run: it has no {CONFIG}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is corrupted ({e.__class__.__name__}); retrain or restore the run") from None
    if not isinstance(cfg, dict) or "family" not in cfg:
        raise RunError(f"{path} is not a genlab run config (no 'family' field)")
    if family is not None and cfg["family"] != family:
        raise RunError(f"run '{run}' holds a {cfg['family']} model, not a {family} model")
    return cfg


# ---- outputs that appear whole or not at all (exports, quantized runs, bundles) ----------------

@contextmanager
def staged_dir(out: Path, overwrite: bool = False, error: type[Exception] = RunError) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it becomes ``out`` in one rename, on any
    failure it is removed, so ``out`` is never half-written."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise error(f"'{out}' already exists; pick another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():  # --overwrite: move the old one aside first, drop it only once the new one is in
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_file(out: Path, overwrite: bool = False, error: type[Exception] = RunError) -> Iterator[Path]:
    """Yield a temp path in ``out``'s folder; on success it is renamed to ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise error(f"'{out}' already exists; pick another --out or pass --overwrite")
    if out.is_dir():
        raise error(f"'{out}' is a folder; give a file name for --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def require_new(run: Path, overwrite: bool) -> None:
    """A new run never silently replaces an existing one."""
    if (Path(run) / CONFIG).exists() and not overwrite:
        raise RunError(f"run '{run}' already exists; continue it with --resume, or pick another --out "
                       f"(or pass --overwrite to replace it)")


def save_checkpoint(run: Path, model: torch.nn.Module, state: dict, meta: dict | None = None,
                    tensors: dict[str, torch.Tensor] | None = None, weights: str = WEIGHTS) -> None:
    """Write the weights file and train_state.pt as one atomic checkpoint (see the module doc).
    ``tensors``/``weights``: another set of tensors under another name (LoRA runs keep adapters only)."""
    run = Path(run)
    step = int(state["step"])
    metadata = {"step": str(step), "genlab_version": genlab.__version__}
    metadata.update({k: str(v) for k, v in (meta or {}).items()})
    w_tmp, s_tmp = _tmp(run / weights), _tmp(run / STATE)
    save_file(weights_of(model) if tensors is None else tensors, str(w_tmp), metadata=metadata)
    _durable(w_tmp)
    torch.save(state, s_tmp)
    _durable(s_tmp)
    os.replace(s_tmp, run / STATE)
    os.replace(w_tmp, run / weights)
    _fsync_dir(run)


def save_weights(run: Path, model: torch.nn.Module, meta: dict | None = None) -> None:
    """Weights alone, atomically (for runs made by import, quantization, distillation...)."""
    run = Path(run)
    tmp = _tmp(run / WEIGHTS)
    save_file(weights_of(model), str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})
    _durable(tmp)
    os.replace(tmp, run / WEIGHTS)
    _fsync_dir(run)


def _weights_step(path: Path) -> int | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        return int(md["step"]) if "step" in md else None
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def _state_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def checkpoint_steps(run: Path, weights: str = WEIGHTS) -> tuple[int | None, int | None]:
    """The steps the weights file and train_state.pt record (None where a file has none)."""
    run = Path(run)
    return _weights_step(run / weights), (_state_step(run / STATE) if (run / STATE).exists() else None)


def recover(run: Path, weights: str = WEIGHTS) -> None:
    """Finish or discard a checkpoint that a kill interrupted."""
    run = Path(run)
    w_tmp, s_tmp = _tmp(run / weights), _tmp(run / STATE)
    if s_tmp.exists():
        # train_state.pt was never replaced, so the previous checkpoint is intact.
        s_tmp.unlink()
        w_tmp.unlink(missing_ok=True)
        return
    if w_tmp.exists():
        state_step = _state_step(run / STATE) if (run / STATE).exists() else None
        if state_step is not None and _weights_step(w_tmp) == state_step:
            os.replace(w_tmp, run / weights)  # roll the half-committed checkpoint forward
            _fsync_dir(run)
        else:
            w_tmp.unlink()


def load_weights(run: str | Path, model: torch.nn.Module) -> dict:
    """Load model.safetensors into ``model``; returns the file's metadata."""
    run = Path(run)
    recover(run)
    path = run / WEIGHTS
    if not path.exists():
        raise RunError(f"run '{run}' has no {WEIGHTS}; it has not saved a checkpoint yet")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise RunError(f"{path} is corrupted ({e}); restore it or retrain") from None
    target = unwrap(model)
    try:
        missing, unexpected = target.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # same names, other shapes: weights from a different config
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e)[:120])
        raise RunError(f"{path} does not match the model in {CONFIG} ({first})") from None
    tied = {n for n in missing if _is_alias(target, n)}
    if set(missing) - tied or unexpected:
        raise RunError(
            f"{path} does not match the model in {CONFIG} "
            f"(missing: {sorted(set(missing) - tied)[:3]}, unexpected: {sorted(unexpected)[:3]})"
        )
    return metadata


def _is_alias(model: torch.nn.Module, name: str) -> bool:
    sd = model.state_dict()
    ptr = sd[name].untyped_storage().data_ptr()
    return any(k != name and v.untyped_storage().data_ptr() == ptr for k, v in sd.items())


def load_train_state(run: str | Path) -> dict:
    run = Path(run)
    recover(run)
    path = run / STATE
    if not path.exists():
        raise RunError(f"run '{run}' has no {STATE} to resume from; start it again without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"{path} is corrupted ({e.__class__.__name__}); the run cannot be resumed") from None
    w_step = _weights_step(run / WEIGHTS)
    if w_step is not None and w_step != int(state["step"]):
        raise RunError(f"{run}: weights (step {w_step}) and train state (step {state['step']}) disagree")
    return state
