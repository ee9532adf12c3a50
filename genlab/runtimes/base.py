"""What every runtime provides: the ``Runner`` protocol, the ``Opened`` artifact, and the export
folder's metadata file that tells runtimes what a folder holds.

A runner is the smallest thing the sampler (``genlab.generate.text``), the evaluator, the runtime
benchmark and the server need of a language model, whatever executes it::

    runner.cfg                      LMConfig: vocab_size and context (and the architecture, when known)
    runner.device                   where its inputs go (torch.device)
    runner.batching                 True if rows at different positions can share one forward pass
                                    through a cache the caller owns (see genlab.studio.batching)
    cache = runner.new_cache(batch)
    logits = runner(idx, cache, start)   idx (batch, T) int64 continuing at position ``start``;
                                    logits (batch, T, vocab). Without a cache every row is scored
                                    from position 0.

genlab's own ``Transformer`` is a runner as it is; exported models get one each in this package.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from genlab.errors import RunError
from genlab.models.transformer import LMConfig

BUNDLE_META = "genlab-export.json"  # in every export folder (ExecuTorch, LiteRT, Core ML): what the files are


@runtime_checkable
class Runner(Protocol):
    cfg: LMConfig
    batching: bool

    @property
    def device(self) -> torch.device: ...

    def new_cache(self, batch: int = 1) -> Any: ...

    def __call__(self, idx: torch.Tensor, cache: Any = None, start: int = 0) -> torch.Tensor: ...


def last_logits(runner: Runner, idx: torch.Tensor, cache: Any = None, start: int = 0) -> torch.Tensor:
    """(batch, vocab) logits of each row's last position: all that sampling needs. A runner that can
    skip the LM head for the other positions (``scores_last_only``: genlab's Transformer) does."""
    if getattr(runner, "scores_last_only", False):
        return runner(idx, cache, start, last_only=True)[:, -1]
    return runner(idx, cache, start)[:, -1]


class TextTokenizer(Protocol):
    """The part of ``tokenizers.Tokenizer`` genlab uses (llama.cpp brings its own tokenizer)."""

    def encode(self, text: str) -> Any: ...  # .ids

    def encode_batch(self, texts: list[str]) -> list[Any]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


@dataclass
class Opened:
    """An LM artifact ready to run: its runner, tokenizer and end-of-text id, and what it is."""

    runner: Runner
    tokenizer: TextTokenizer
    eot: int | None
    path: Path
    runtime: str  # the registry name: "pytorch", "onnxruntime", "executorch", ...
    precision: str = "fp32"
    # What the artifact records about its source: the training data section (for `genlab eval`),
    # the source run, the chat template, ...
    meta: dict = field(default_factory=dict)


def read_bundle_meta(folder: Path) -> dict:
    path = Path(folder) / BUNDLE_META
    if not path.is_file():
        raise RunError(f"'{folder}' is not a genlab export folder (no {BUNDLE_META})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None


def bundle_format(path: Path) -> str | None:
    """The format an export folder records ("executorch", "tflite", "coreml"), or None."""
    if not (Path(path) / BUNDLE_META).is_file():
        return None
    return read_bundle_meta(path).get("format")


def read_json_config(path: Path) -> dict | None:
    """``path/config.json`` as a dict, or None when there is none or it is not JSON."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def require(module: str, extra: str, what: str, error: type[Exception] = RunError):
    """Import an optional dependency or say, in one line, which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{what} needs the '{module.split('.')[0]}' package: pip install 'genlab[{extra}]'") from None


def lm_bundle_meta(folder: Path, fmt: str) -> dict:
    """The metadata of an LM export folder of format ``fmt``; a clear error for an image export."""
    meta = read_bundle_meta(folder)
    if meta.get("family") != "lm":
        raise RunError(f"'{folder}' holds an exported {meta.get('family')} model (z, labels -> images), not a "
                       f"language model; run its generator with the {fmt} runtime")
    return meta


def opened_bundle(folder: Path, meta: dict, runner: Runner, runtime: str) -> Opened:
    """An LM export folder's runner with the tokenizer and end-of-text token the folder carries."""
    from tokenizers import Tokenizer

    from genlab.data.tokenizer import EOT

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    return Opened(runner, tok, tok.token_to_id(meta.get("eos_token") or EOT), Path(folder), runtime,
                  meta.get("precision", "fp32"), {k: meta[k] for k in ("data", "source_run") if k in meta})
