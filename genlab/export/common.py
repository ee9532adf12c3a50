"""What every export target shares: the exporter interface and its report, the parity probe and its
tolerances, and the export folder's metadata.

An export target is one module in this package that ends with ``EXPORTER = Exporter(...)``: its
name, the model families it takes, the options it reads, how its output is named, and the function
that writes it. Every export returns one ``ExportReport``: the files written, the parity figures
of each check that ran, and what could not be checked on this machine and why. genlab.export.registry
lists the targets; the CLI's `export` command and its help are built from that list.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genlab.errors import GenlabError
from genlab.runtimes.base import BUNDLE_META
from genlab.runtimes.base import require as _require


class ExportError(GenlabError):
    """An export that cannot be made, or whose output does not match the PyTorch model."""


# ---- tolerances, shared by every target -----------------------------------------------------------
# fp32 graphs differ from fp32 PyTorch by the order of float sums only.
FP32_TOLERANCE = 1e-4
# int8 graphs are compared with the float model, so the difference is the quantization error; it is
# bounded relative to the size of the logits (measured on the tiny test model: ~1.3-1.6%).
INT8_RELATIVE_TOLERANCE = 0.05


@dataclass
class ExportOptions:
    """Every option an export target may read; each target declares which ones it takes."""

    int8: bool = False  # onnx, executorch, tflite
    gguf_type: str = "f16"  # gguf: f16 or q8_0
    compress: str | None = None  # coreml: palettize4, palettize6, int8
    stateful: bool = False  # coreml: the KV cache as Core ML state


# How each option is spelled on the command line, for messages.
OPTION_FLAGS = {"int8": "--int8", "gguf_type": "--type", "compress": "--compress", "stateful": "--stateful"}


@dataclass
class ExportReport:
    format: str
    out: Path
    files: list[Path] = field(default_factory=list)
    checks: list[Parity] = field(default_factory=list)  # every parity check that ran (all passed)
    figures: dict = field(default_factory=dict)  # LMs: greedy agreement, perplexity change
    unchecked: list[str] = field(default_factory=list)  # what could not be checked here, and why

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass(frozen=True)
class Exporter:
    name: str
    summary: str  # one line for `genlab export --help`
    families: tuple[str, ...]
    options: tuple[str, ...]  # the ExportOptions fields it reads
    # (run, options) -> the default --out beside the run, e.g. "tiny-int8.onnx"
    default_name: Callable[[Path, ExportOptions], str]
    # (run, out, options, overwrite, log) -> report; out appears whole or not at all
    export: Callable[[Path, Path, ExportOptions, bool, Callable[[str], None]], ExportReport]


def require(module: str, extra: str, what: str):
    """Import an optional dependency or say, in one line, which extra to install."""
    return _require(module, extra, what, error=ExportError)


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
# genlab-export.json, which says what the files are so `genlab.load(FOLDER)` can run them
# (genlab.runtimes reads it).


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


@torch.no_grad()
def logit_parity(reference, candidate, vocab_size: int, context: int, runtime: str, prompt: int, steps: int,
                 tolerance: float, int8_relative: float | None = None, detail: str = "") -> Parity:
    """Logits of a prefill of ``prompt`` probe tokens, then ``steps`` one-token decode steps through
    each model's KV cache, from ``candidate`` (an export's runner) and ``reference`` (PyTorch); the
    largest difference over all of them. Both take ``model(idx, cache, start)``. With
    ``int8_relative`` the tolerance is that fraction of the largest reference logit."""
    prompt = max(1, min(prompt, context - steps))
    steps = min(steps, context - prompt)
    ids = probe_tokens(vocab_size, prompt + steps, seed=1)
    ref_cache, cache = reference.new_cache(1), candidate.new_cache(1)
    ref = [reference(ids[:, :prompt], ref_cache, 0)]
    got = [candidate(ids[:, :prompt], cache, 0)]
    for i in range(prompt, prompt + steps):
        ref.append(reference(ids[:, i : i + 1], ref_cache, i))
        got.append(candidate(ids[:, i : i + 1], cache, i))
    ref_t, got_t = torch.cat(ref, 1), torch.cat(got, 1)
    scale = ref_t.abs().max().item()
    tol = int8_relative * scale if int8_relative is not None else tolerance
    what = f"{runtime} vs PyTorch, prefill {prompt} tokens{detail} + {steps} decode steps"
    return Parity(what, (ref_t - got_t).abs().max().item(), tol, scale)


def export_figures(run: Path, exported) -> tuple[dict, str]:
    """Greedy agreement over 256 tokens and the validation perplexity change of an exported LM
    (a ``LanguageModel``) against its source run in PyTorch, and the line that reports them."""
    from genlab.generate.text import load_lm

    f = lm_parity_figures(load_lm(run, device="cpu"), exported, validation_tokens(run, 2048))
    line = f"greedy agreement {f['greedy_agreement']}/{f['greedy_tokens']} tokens"
    if "ppl_change_pct" in f:
        line += (f"; validation perplexity {f['ppl_reference']:.4g} -> {f['ppl_export']:.4g} "
                 f"({f['ppl_change_pct']:+.2f}%, {f['ppl_tokens']} tokens)")
    return f, line


def leading_agreement(reference: list[int], got: list[int]) -> int:
    """How many leading tokens two greedy generations share (after the first difference they see
    different histories, so later matches mean little)."""
    return next((i for i, (a, b) in enumerate(zip(reference, got, strict=False)) if a != b),
                min(len(reference), len(got)))


def lm_parity_figures(reference, candidate, val_tokens=None, greedy_tokens: int = 256,
                      prompt: str = "The") -> dict:
    """The figures every LM export reports, for two ``LanguageModel``s (PyTorch and the export):
    greedy-token agreement (how many of ``greedy_tokens`` greedy tokens are identical before the
    first difference) and, given validation tokens, both perplexities and the relative change."""
    import math

    from genlab.train.lm import token_nll

    kw = dict(max_tokens=greedy_tokens, temperature=0.0, ignore_eot=True)
    reference.generate(prompt, **kw)
    ref_ids = list(reference.info.completion_ids)
    candidate.generate(prompt, **kw)
    got_ids = list(candidate.info.completion_ids)
    figures = {"greedy_agreement": leading_agreement(ref_ids, got_ids), "greedy_tokens": len(ref_ids)}
    if val_tokens is not None and len(val_tokens) > 1:
        ctx = reference.config.context
        (ref_nll, count), (got_nll, _) = (token_nll(lm.model, val_tokens, ctx, batch_size=1)
                                          for lm in (reference, candidate))
        figures.update(ppl_reference=math.exp(ref_nll / count), ppl_export=math.exp(got_nll / count),
                       ppl_change_pct=100 * (math.exp((got_nll - ref_nll) / count) - 1), ppl_tokens=count)
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


def exported_lm(runner, run: Path, where: Path):
    """A ``LanguageModel`` over an export's runner, with the source run's tokenizer and end-of-text
    token: the export's figures are measured with genlab's own sampling and scoring."""
    from genlab import runs
    from genlab.data import tokenizer as tokmod
    from genlab.generate.text import LanguageModel

    tok = tokmod.load(run / runs.TOKENIZER)
    return LanguageModel(runner, tok, where, tok.token_to_id(runs.read_config(run).get("eos_token") or tokmod.EOT))


def lm_report(fmt: str, out: Path, files: list[Path], parity: Parity, run: Path, runner, where: Path,
              log) -> ExportReport:
    """The report of an LM export whose ``parity`` passed: the fuller figures (greedy agreement,
    perplexity change) measured through ``runner``, logged and recorded."""
    figures, line = export_figures(run, exported_lm(runner, run, where))
    log(line)
    return ExportReport(fmt, out, files, [parity], figures)
