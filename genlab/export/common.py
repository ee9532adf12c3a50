"""What every export target shares: all-or-nothing output, the parity probe, and its report."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.errors import GenlabError


class ExportError(GenlabError):
    """An export that cannot be made, or whose output does not match the PyTorch model."""


@contextmanager
def staged_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it becomes ``out`` in one rename, on any
    failure it is removed, so ``out`` is never half-written."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"'{out}' already exists; pick another --out or pass --overwrite")
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
def staged_file(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path in ``out``'s folder; on success it is renamed to ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"'{out}' already exists; pick another --out or pass --overwrite")
    if out.is_dir():
        raise ExportError(f"'{out}' is a folder; give a file name for --out")
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


def probe_tokens(vocab_size: int, length: int, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random (1, length) token sequence for parity checks (the same every export)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, length), generator=g)


@dataclass
class Parity:
    """Largest absolute logit difference between an export and the PyTorch model."""

    what: str  # e.g. "onnxruntime vs PyTorch, prefill 16 tokens + 8 decode steps"
    max_abs_diff: float
    tolerance: float
    logit_scale: float = 0.0  # largest |logit| of the reference, to read the difference against

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        return (f"parity ({self.what}): max |logit diff| {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:g}, logits up to {self.logit_scale:.3g})")

    def check(self) -> Parity:
        if not self.ok:
            raise ExportError(f"parity check failed ({self.what}): max |logit diff| {self.max_abs_diff:.3g} "
                              f"exceeds {self.tolerance:g}; the export was not written")
        return self
