"""Perplexity and bits per byte of a language model on held-out text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab.config import DataConfig
from genlab.data import conversations as conv
from genlab.data import corpus
from genlab.data import prepare as prep
from genlab.errors import DataError
from genlab.generate.text import load_lm
from genlab.train.lm import lm_metrics, token_nll


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
    else:  # runs and export folders record their training data; the validation split is rebuilt from it
        section = lm.meta.get("data")
        if not isinstance(section, dict) or "config" not in section:  # imported checkpoints, .onnx files
            raise DataError(f"'{run}' records no training data (no validation split); give held-out text with --data")
        if conv.is_chat(section["config"]["corpus"]):
            return _chat_eval(run, lm, DataConfig(**section["config"]), batch_size)
        prepared = prep.prepare(DataConfig(**section["config"]), tok=lm.tokenizer, log=lambda m: None)
        tokens = np.asarray(prepared.tokens("val"), dtype=np.int64)
        n_bytes = round(len(tokens) * section["bytes_per_token"])
        source = "validation split of " + ", ".join(section["config"]["corpus"])
    if max_tokens is not None:
        n_bytes = round(n_bytes * min(1.0, max_tokens / len(tokens)))
        tokens = tokens[:max_tokens]
    if len(tokens) < 2:
        raise DataError("the evaluation text is shorter than two tokens")
    nll, count = token_nll(lm.model, tokens, ctx, batch_size, lm.device)
    return {"run": str(run), "data": source, "tokens": int(count), "bytes": int(n_bytes),
            **lm_metrics(nll / count, n_bytes / len(tokens))}


def _chat_eval(run, lm, data_cfg: DataConfig, batch_size: int) -> dict:
    """A run fine-tuned on chat JSONL: the loss on the assistant's tokens of its held-out conversations
    (every one of them), as its training evals measure it."""
    from genlab.train.lm import ChatTask

    if not hasattr(lm.model, "embed"):
        raise DataError(f"'{run}' was fine-tuned on chat data; its held-out conversations are scored on the "
                        f"run itself (give held-out text with --data to score this artifact)")
    data = conv.prepare_chat(data_cfg, Path(run), log=lambda m: None)
    task = ChatTask(lm.model, data, batch_size, eval_batches=len(data.val) + 1)
    metrics = task.evaluate(lm.model)
    return {"run": str(run), "data": "assistant turns of the held-out conversations of " + ", ".join(data_cfg.corpus),
            "tokens": int(data.meta["val_assistant_tokens"]), "bytes": int(sum(c.n_bytes for c in data.val)),
            **metrics}


def validation_prefix(run: str | Path, corpus_spec: str, eval_bytes: int) -> tuple[np.ndarray, int]:
    """The first tokens of ``corpus_spec``'s validation split under ``run``'s tokenizer, covering at
    least ``eval_bytes`` of text, and the exact bytes they decode to. The split depends on the corpus
    alone, so models with different tokenizers are scored on the same documents."""
    from genlab import runs
    from genlab.data import tokenizer as tokmod

    tok = tokmod.load(Path(run) / runs.TOKENIZER)
    data = prep.prepare(DataConfig(corpus=[corpus_spec]), tok=tok, log=lambda m: None)
    val = data.tokens("val")
    n = min(len(val), max(64, int(eval_bytes / max(data.meta["bytes_per_token"], 0.5))))
    while True:  # bytes per token vary along the text: grow the prefix until it covers eval_bytes
        nbytes = len(tok.decode(val[:n].tolist(), skip_special_tokens=False).encode())
        if nbytes >= eval_bytes or n >= len(val):
            return np.asarray(val[:n], dtype=np.int64), nbytes
        n = min(len(val), int(n * eval_bytes / max(nbytes, 1)) + 16)


@torch.no_grad()
def heldout_bits_per_byte(run: str | Path, corpus_spec: str, eval_bytes: int = 16_000, context: int = 256,
                          device: str = "cpu") -> float:
    """Bits per byte of ``run`` on the first ``eval_bytes`` of ``corpus_spec``'s validation split,
    scored in windows of ``context`` tokens (the model's own context if shorter)."""
    import math

    tokens, nbytes = validation_prefix(run, corpus_spec, eval_bytes)
    lm = load_lm(run, device=device)
    nll, _ = token_nll(lm.model, tokens, min(context, lm.config.context), 4, lm.device)
    return nll / math.log(2) / nbytes
