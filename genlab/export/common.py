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
    unit: str = "logit"  # "logit" for LMs, "pixel" for generated images in [0, 1]
    mean_abs_diff: float | None = None  # images: the mean difference too, with its own tolerance
    mean_tolerance: float | None = None

    @property
    def ok(self) -> bool:
        mean_ok = self.mean_tolerance is None or (self.mean_abs_diff or 0.0) <= self.mean_tolerance
        return self.max_abs_diff <= self.tolerance and mean_ok

    def line(self) -> str:
        scale = f", logits up to {self.logit_scale:.3g}" if self.unit == "logit" else ""
        mean = (f", mean {self.mean_abs_diff:.3g} (tolerance {self.mean_tolerance:g})"
                if self.mean_abs_diff is not None else "")
        return (f"parity ({self.what}): max |{self.unit} diff| {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:g}{scale}){mean}")

    def check(self) -> Parity:
        if not self.ok:
            raise ExportError(f"parity check failed {self.line().removeprefix('parity ')}: beyond tolerance; "
                              f"the export was not written")
        return self


# ---- bundles: the folder an edge export writes ---------------------------------------------------
# ExecuTorch, LiteRT and Core ML exports are folders: the model file(s), the tokenizer (LMs) and
# genlab-export.json, which says what the files are so `genlab.load(FOLDER)` can run them.

BUNDLE_META = "genlab-export.json"


def write_bundle_meta(folder: Path, fmt: str, run: Path, files: dict[str, str], parity: list[Parity],
                      **extra) -> dict:
    """Write ``genlab-export.json`` into ``folder``: format, family, model config, files by role
    ({"lm": "model.pte"} or {"generator": "generator.tflite"}), the source run's data section (so
    `genlab eval FOLDER` scores the same validation split) and the parity figures."""
    from genlab import runs
    from genlab.config import write_json

    cfg = runs.read_config(run)
    meta = {
        "format": fmt,
        "family": cfg["family"],
        "model": cfg["model"],
        "source_run": str(run),
        "files": files,
        "parity": [{"what": p.what, "unit": p.unit, "max_abs_diff": p.max_abs_diff, "tolerance": p.tolerance}
                   for p in parity],
        **{k: cfg[k] for k in ("data", "eos_token") if k in cfg},
        **extra,
    }
    if cfg["family"] == "lm" and (run / runs.TOKENIZER).exists():
        shutil.copyfile(run / runs.TOKENIZER, folder / runs.TOKENIZER)
    write_json(folder / BUNDLE_META, meta)
    return meta


def read_bundle_meta(folder: Path) -> dict:
    import json

    folder = Path(folder)
    path = folder / BUNDLE_META
    if not path.is_file():
        raise ExportError(f"'{folder}' is not a genlab export folder (no {BUNDLE_META})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ExportError(f"{path} is not valid JSON ({e})") from None


def require(module: str, extra: str, what: str):
    """Import an optional dependency or say, in one line, which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the '{module.split('.')[0]}' package: pip install 'genlab[{extra}]'") from None


# Export folders whose LM runs on this machine: format -> module with ``load_bundle_runner(folder, meta)``.
RUNNABLE_BUNDLES = {"executorch": "genlab.export.executorch", "tflite": "genlab.export.tflite"}


def load_bundle_lm(folder: Path):
    """A ``LanguageModel`` that generates through the runtime of an export folder."""
    import importlib

    from tokenizers import Tokenizer

    from genlab.data import tokenizer as tokmod
    from genlab.generate.text import LanguageModel

    meta = read_bundle_meta(folder)
    if meta.get("family") != "lm":
        raise ExportError(f"'{folder}' holds an exported {meta.get('family')} model, not a language model")
    fmt = meta.get("format")
    if fmt not in RUNNABLE_BUNDLES:
        raise ExportError(f"'{folder}' is a {fmt} export, which cannot run on this machine "
                          f"(runnable here: {', '.join(RUNNABLE_BUNDLES)})")
    runner = importlib.import_module(RUNNABLE_BUNDLES[fmt]).load_bundle_runner(Path(folder), meta)
    lm = LanguageModel(runner, Tokenizer.from_file(str(Path(folder) / "tokenizer.json")), Path(folder))
    lm.eot = lm.tokenizer.token_to_id(meta.get("eos_token") or tokmod.EOT)
    return lm


def lm_parity_figures(reference, candidate, val_tokens=None, greedy_tokens: int = 256,
                      prompt: str = "The") -> dict:
    """The figures every LM export reports, for two ``LanguageModel``s (PyTorch and the export):
    greedy-token agreement (how many of ``greedy_tokens`` greedy tokens are identical before the
    first difference) and, given validation tokens, both perplexities and the relative change."""
    import math

    import torch.nn.functional as F

    kw = dict(max_tokens=greedy_tokens, temperature=0.0, ignore_eot=True)
    reference.generate(prompt, **kw)
    ref_ids = list(reference.info.completion_ids)
    candidate.generate(prompt, **kw)
    got_ids = list(candidate.info.completion_ids)
    same = next((i for i, (a, b) in enumerate(zip(ref_ids, got_ids, strict=False)) if a != b), min(len(ref_ids), len(got_ids)))
    figures = {"greedy_agreement": same, "greedy_tokens": len(ref_ids)}
    if val_tokens is not None and len(val_tokens) > 1:
        ctx = reference.config.context
        losses = []
        for lm in (reference, candidate):
            nll, count = 0.0, 0
            for s in range(0, len(val_tokens) - 1, ctx):
                w = torch.as_tensor(val_tokens[s : s + ctx + 1], dtype=torch.long)[None]
                with torch.no_grad():
                    logits = lm.model(w[:, :-1])
                nll += F.cross_entropy(logits.float()[0], w[0, 1:], reduction="sum").item()
                count += w.shape[1] - 1
            losses.append(nll / count)
        figures.update(ppl_reference=math.exp(losses[0]), ppl_export=math.exp(losses[1]),
                       ppl_change_pct=100 * (math.exp(losses[1] - losses[0]) - 1), ppl_tokens=count)
    return figures


def validation_tokens(run: Path, max_tokens: int = 4096):
    """The first ``max_tokens`` tokens of a run's validation split (None if it records no data)."""
    import numpy as np

    from genlab import runs
    from genlab.config import DataConfig
    from genlab.data import prepare as prep
    from genlab.data import tokenizer as tokmod

    cfg = runs.read_config(run)
    if not isinstance(cfg.get("data"), dict) or "config" not in cfg["data"]:
        return None
    tok = tokmod.load(Path(run) / runs.TOKENIZER)
    prepared = prep.prepare(DataConfig(**cfg["data"]["config"]), tok=tok, log=lambda m: None)
    return np.asarray(prepared.tokens("val")[:max_tokens], dtype=np.int64)
