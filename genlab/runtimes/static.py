"""The LM with a fixed-size KV cache, for runtimes that want static shapes (ExecuTorch, LiteRT,
Core ML), and the runner that drives such a model behind the ``Runner`` call (genlab.runtimes.base).

Two entry points with static shapes serve any prompt:

    prefill  tokens (1, chunk) int64, input_pos (chunk,) int64, k.0, v.0, ... -> logits (1, chunk, vocab), k.0', v.0', ...
    decode   tokens (1, 1)     int64, input_pos (1,)     int64, k.0, v.0, ... -> logits (1, 1, vocab),     k.0', v.0', ...

Each cache tensor is (1, n_kv_head, context, head_dim) fp32. A step writes its keys and values at
``input_pos`` and attends to every position <= its own. The write is a one-hot matrix product
rather than a scatter, and the mask is additive, so the graph uses only ops every edge runtime
lowers (matmul, mul, add, softmax). A prompt is fed in chunks; the last chunk is padded at the end,
and what the padding writes beyond the prompt is masked out until decoding overwrites it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genlab.models.transformer import Cache, LMConfig, Transformer

MASKED = -1e4  # additive mask value: exp(-1e4) is 0 in fp32 and fp16 alike, and it does not overflow fp16


def cache_names(n_layer: int) -> list[str]:
    return [f"{kv}.{i}" for i in range(n_layer) for kv in "kv"]


class _OneHotCache(Cache):
    """Stands in for KVCache inside the model's attention: returns the full fixed-size caches with
    this step's keys/values written at ``input_pos``, and keeps them as outputs."""

    def __init__(self, past: list[torch.Tensor], write: torch.Tensor) -> None:
        self.past = past
        self.write = write  # (chunk, context) one-hot rows
        self.keep = 1.0 - write.sum(0)[:, None]  # (context, 1): 0 where this step writes
        self.present: list[torch.Tensor] = []
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        new = []
        for old, x in ((self.past[2 * layer], k), (self.past[2 * layer + 1], v)):
            new.append(old * self.keep + torch.matmul(self.write.t(), x))  # (1, h, ctx, d)
        self.present += new
        return new[0], new[1]


class StaticKVLM(nn.Module):
    """``forward(tokens, input_pos, *caches) -> (logits, *new_caches)`` with a fixed-size cache."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.cfg: LMConfig = model.cfg

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, *caches: torch.Tensor):
        m, ctx = self.model, self.cfg.context
        slots = torch.arange(ctx, device=tokens.device)
        write = (slots[None, :] == input_pos[:, None]).float()  # (chunk, ctx)
        visible = slots[None, :] <= input_pos[:, None]  # (chunk, ctx): causal over absolute positions
        mask = torch.where(visible, 0.0, MASKED)[None, None]  # (1, 1, chunk, ctx), float and additive
        cos, sin = m.rope_cos[input_pos], m.rope_sin[input_pos]
        cache = _OneHotCache(list(caches), write)
        x = m.embed(tokens)
        for i, layer in enumerate(m.layers):
            x = layer(x, cos, sin, cache, i, 0, mask)
        return (m.lm_head(m.norm(x)), *cache.present)

    def empty_caches(self) -> list[torch.Tensor]:
        shape = (1, self.cfg.n_kv_head, self.cfg.context, self.cfg.head_dim)
        return [torch.zeros(shape) for _ in range(2 * self.cfg.n_layer)]

    def example_inputs(self, chunk: int) -> tuple[torch.Tensor, ...]:
        tokens = torch.zeros(1, chunk, dtype=torch.long)
        return (tokens, torch.arange(chunk, dtype=torch.long), *self.empty_caches())


def prefill_chunk(context: int) -> int:
    """The prefill signature's length: long prompts take few calls, short ones pad little."""
    return min(context, 32)


class StaticCache:
    """The caches a static runner carries between calls (numpy, fp32)."""

    def __init__(self, cfg: LMConfig) -> None:
        shape = (1, cfg.n_kv_head, cfg.context, cfg.head_dim)
        self.tensors = [np.zeros(shape, np.float32) for _ in range(2 * cfg.n_layer)]
        self.length = 0


class StaticRunner:
    """Drives a static-shape LM (prefill chunks + one-token decode) behind the ``Runner`` call:
    ``runner(idx, cache, start) -> logits`` and ``new_cache``.

    Subclasses implement ``run(which, tokens, input_pos, caches) -> (logits, caches)`` for their
    runtime, with ``which`` "prefill" or "decode"; everything here is numpy."""

    def __init__(self, cfg: LMConfig, chunk: int) -> None:
        self.cfg = cfg
        self.chunk = chunk

    def run(self, which: str, tokens: np.ndarray, input_pos: np.ndarray,
            caches: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        raise NotImplementedError

    device = torch.device("cpu")  # these runtimes run on the CPU
    batching = False  # one sequence per call (batch 1 is baked into the graphs)

    def new_cache(self, batch: int = 1) -> StaticCache:
        if batch != 1:
            raise ValueError("static exports run one sequence at a time (batch 1)")
        return StaticCache(self.cfg)

    def __call__(self, idx: torch.Tensor, cache: StaticCache | None = None, start: int = 0) -> torch.Tensor:
        """Logits (batch, T, vocab) for ``idx`` continuing at ``start``; without a cache every row
        is scored from position 0 with a fresh cache, one row at a time."""
        if cache is None:
            return torch.cat([self(row[None], StaticCache(self.cfg), 0) for row in idx])
        ids = idx[0].cpu().numpy().astype(np.int64)
        T = len(ids)
        if start + T > self.cfg.context:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.cfg.context}")
        if T == 1:
            logits, cache.tensors = self.run("decode", ids[None], np.array([start], np.int64), cache.tensors)
            cache.length = start + 1
            return torch.from_numpy(np.ascontiguousarray(logits))
        pieces = []
        for s in range(0, T, self.chunk):
            part = ids[s : s + self.chunk]
            n = len(part)
            # Pad the last chunk at the end; its positions run past the prompt (clamped to the context)
            # and are masked out for the real tokens, then overwritten by later steps.
            pos = np.minimum(np.arange(start + s, start + s + self.chunk), self.cfg.context - 1).astype(np.int64)
            padded = np.zeros(self.chunk, np.int64)
            padded[:n] = part
            if n < self.chunk and start + s + self.chunk > self.cfg.context:
                # Clamped padding positions would collide with real ones: decode the tail one by one.
                for j, tok in enumerate(part):
                    lg, cache.tensors = self.run("decode", np.array([[tok]], np.int64),
                                                 np.array([start + s + j], np.int64), cache.tensors)
                    pieces.append(lg)
                continue
            logits, cache.tensors = self.run("prefill", padded[None], pos, cache.tensors)
            pieces.append(logits[:, :n])
        cache.length = start + T
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(pieces, axis=1)))


class EagerStaticRunner(StaticRunner):
    """The static graph run by PyTorch itself: the reference every static export is compared with."""

    def __init__(self, model: Transformer, chunk: int | None = None) -> None:
        super().__init__(model.cfg, chunk or prefill_chunk(model.cfg.context))
        self.module = StaticKVLM(model).eval()

    @torch.no_grad()
    def run(self, which, tokens, input_pos, caches):
        out = self.module(torch.from_numpy(tokens), torch.from_numpy(input_pos), *map(torch.from_numpy, caches))
        return out[0].numpy(), [c.numpy() for c in out[1:]]
