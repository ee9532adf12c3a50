"""Perplexity and bits per byte of a language model on held-out text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab import runs
from genlab.config import DataConfig
from genlab.data import corpus
from genlab.data import prepare as prep
from genlab.errors import DataError
from genlab.generate.text import load_lm


@torch.no_grad()
def token_nll(model, tokens: np.ndarray, context: int, batch_size: int = 8, device="cpu") -> tuple[float, int]:
    """Summed negative log-likelihood of ``tokens`` and how many were predicted. The text is cut
    into windows of context + 1 tokens that overlap by one, so every token but the first is
    predicted exactly once; ``model(x)`` gives logits for a batch of windows."""
    windows = [torch.from_numpy(tokens[s : s + context + 1]) for s in range(0, len(tokens) - 1, context)]
    full = [w for w in windows if len(w) == context + 1]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w[None] for w in windows if len(w) != context + 1]  # the shorter tail window
    nll, count = 0.0, 0
    for batch in batches:
        x, y = batch[:, :-1].to(device), batch[:, 1:].to(device)
        logits = model(x)
        nll += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return nll, count


@torch.no_grad()
def evaluate_lm(run: str | Path, data: list[str] | None = None, batch_size: int = 8,
                max_tokens: int | None = None, device: str = "auto") -> dict:
    """Score ``data`` (corpus specs) or, without it, the run's own validation split.

    Every token but the first is predicted once (see ``token_nll``). Bits per byte divide the loss by the UTF-8 bytes per token,
    which makes models with different tokenizers comparable.
    """
    lm = load_lm(run, device=device)
    ctx = lm.config.context
    if data:
        docs = corpus.documents(corpus.resolve(data))
        eot = lm.eot if lm.eot is not None else 0
        ids: list[int] = []
        for enc in lm.tokenizer.encode_batch(docs):
            ids += enc.ids + [eot]
        tokens = np.asarray(ids, dtype=np.int64)
        n_bytes = sum(len(d.encode()) for d in docs)
        source = ", ".join(data)
    else:
        if Path(run).suffix == ".onnx":
            raise DataError("an exported .onnx file has no validation split; give held-out text with --data")
        if (Path(run) / "genlab-export.json").is_file():  # an export folder records its source run's data
            from genlab.export.common import read_bundle_meta

            cfg = read_bundle_meta(Path(run))
        else:
            cfg = runs.read_config(run, family="lm")
        if not isinstance(cfg.get("data"), dict):  # imported checkpoints carry no training data
            raise DataError(f"run '{run}' records no training data; give held-out text with --data")
        prepared = prep.prepare(DataConfig(**cfg["data"]["config"]), tok=lm.tokenizer, log=lambda m: None)
        tokens = np.asarray(prepared.tokens("val"), dtype=np.int64)
        n_bytes = round(len(tokens) * cfg["data"]["bytes_per_token"])
        source = "validation split of " + ", ".join(cfg["data"]["config"]["corpus"])
    if max_tokens is not None:
        n_bytes = round(n_bytes * min(1.0, max_tokens / len(tokens)))
        tokens = tokens[:max_tokens]
    if len(tokens) < 2:
        raise DataError("the evaluation text is shorter than two tokens")
    nll, count = token_nll(lm.model, tokens, ctx, batch_size, lm.device)
    loss = nll / count
    bytes_per_token = n_bytes / len(tokens)
    return {
        "run": str(run),
        "data": source,
        "tokens": int(count),
        "bytes": int(n_bytes),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss / math.log(2) / bytes_per_token,
    }
