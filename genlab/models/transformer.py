"""A Llama-style decoder-only Transformer in one file.

Token embedding -> N x [RMSNorm -> grouped-query attention with rotary embeddings -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (optionally tied to the embedding).
Attention runs through ``F.scaled_dot_product_attention``; generation uses a pre-allocated KV cache.

Weight names and the rotary layout (rotate-half) follow Hugging Face's LlamaForCausalLM so that
exporters can map tensors one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.jsonconfig import JsonConfig
from genlab.kernels.decode import decode_step as c_decode_step


@dataclass
class LMConfig(JsonConfig):
    vocab_size: int = 512
    context: int = 128  # longest sequence the model attends over (block size)
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2  # grouped-query attention: n_head must be a multiple of it
    d_model: int = 64
    ffn_hidden: int = 0  # 0 = SwiGLU's usual 8/3 * d_model, rounded up to a multiple of 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.ffn_hidden <= 0:
            self.ffn_hidden = 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self) -> None:
        from genlab.errors import ConfigError

        for name in ("vocab_size", "context", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (got {getattr(self, name)})")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.head_dim % 2:
            raise ConfigError(f"head size d_model/n_head = {self.head_dim} must be even for rotary embeddings")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")



class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for stability under bf16 autocast, as Llama does (one fused op).
        x32 = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * x32.type_as(x)


def rotary_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim) in the rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Cache:
    """What attention asks of a key/value cache. ``update`` stores this step's keys and values and
    returns everything a query may attend to. A cache also decides where its rows are: by default
    every row continues at ``start`` and attends causally to what is cached; a cache whose rows sit
    at different positions (batched decoding, genlab.studio.batching) returns each row's positions
    and an attention mask instead, so the model itself needs no batching code."""

    length = 0  # positions filled so far (the model records it after each call)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def positions(self, start: int, T: int) -> torch.Tensor | None:
        """(batch, T) rotary positions per row, or None for ``start .. start + T - 1`` in every row."""
        return None

    def attn_mask(self, start: int, T: int) -> torch.Tensor | None:
        """A boolean mask broadcastable to (batch, heads, T, cached length), or None for causal."""
        return None

    def last_columns(self, T: int) -> torch.Tensor | None:
        """(batch,) the column of each row's last real token when rows of one forward pass carry
        different numbers of tokens (padded batched prefill), or None: the last column in every row."""
        return None

    def kernel_buffers(self, start: int) -> tuple[list, list, torch.Tensor] | None:
        """For the C decode step (genlab.kernels.decode), one new token per row at ``start``: every
        layer's key and value tensors, (rows, n_kv_head, capacity, head_dim), with room for it, and
        each row's position (int64); None where this cache cannot lend them."""
        return None


def cache_capacity(needed: int, limit: int, smallest: int = 256) -> int:
    """Positions to allocate for ``needed`` of them: the next power of two from ``smallest`` on, at
    most ``limit``. A cache grows in these steps, so memory follows the tokens really held (not the
    model's context) and it is re-allocated only a logarithmic number of times."""
    size = smallest
    while size < needed:
        size *= 2
    return min(size, limit)


class KVCache(Cache):
    """Keys and values for every layer, (batch, n_kv_head, capacity, head_dim), growing in
    power-of-two steps up to ``max_len`` as positions are written."""

    def __init__(self, cfg: LMConfig, batch: int, max_len: int, device, dtype, capacity: int = 0) -> None:
        self.shape = (batch, cfg.n_kv_head, 0, cfg.head_dim)
        self.k = [torch.zeros(self.shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(self.shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0  # positions filled so far
        self.max_len = max_len
        if capacity:
            self.reserve(capacity)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` positions (copying what is cached into the larger buffers)."""
        if needed <= self.capacity:
            return
        if needed > self.max_len:
            raise ValueError(f"sequence of {needed} tokens exceeds the cache's {self.max_len} positions")
        size = cache_capacity(needed, self.max_len)
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):
                new = old.new_zeros(old.shape[0], old.shape[1], size, old.shape[3])
                new[:, :, : old.shape[2]] = old
                buffers[i] = new

    def kernel_buffers(self, start: int) -> tuple[list, list, torch.Tensor]:
        self.reserve(start + 1)
        return self.k, self.v, torch.full((self.k[0].shape[0],), start, dtype=torch.long)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        if layer == 0:
            self.reserve(end)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def fuse_rows(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing ``cat([layer(x) for layer in layers], -1)``, whose weights the given
    layers then view; None when they are not all plain bias-free linear layers of one kind (the
    quantized kind says how to fuse itself: ``fuse_rows`` on its class)."""
    kind = type(layers[0])
    if any(type(m) is not kind for m in layers):
        return None
    if kind is nn.Linear:
        if any(m.bias is not None for m in layers):
            return None
        weight = torch.cat([m.weight.detach() for m in layers])
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)
        start = 0
        for m in layers:
            rows = m.weight.shape[0]
            m.weight = nn.Parameter(weight[start : start + rows], requires_grad=m.weight.requires_grad)
            start += rows
        return fused
    fuse = getattr(kind, "fuse_rows", None)
    return fuse(layers) if fuse is not None else None


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, start: int = 0,
                attn_mask: torch.Tensor | None = None):
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
        return self.attend(q, k, v, attn_mask)

    qkv: nn.Module | None = None  # set by fuse_for_inference: q, k and v projections as one matrix

    def project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (batch, heads, time, head_dim), rotated to their positions."""
        B, T, _ = x.shape
        if self.qkv is not None:  # one product, and one rotation for the query and key heads together
            heads = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
            qk = apply_rotary(heads[:, : self.n_head + self.n_kv_head], cos, sin)
            return qk[:, : self.n_head], qk[:, self.n_head :], heads[:, self.n_head + self.n_kv_head :]
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q, k, v, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The new positions' queries over every key they may see (the cached ones included)."""
        B, _, T, _ = q.shape
        dropout = self.dropout if self.training else 0.0
        groups = self.n_head // self.n_kv_head
        if T == 1 and groups > 1 and not torch.compiler.is_compiling():
            # One new token per row: the query heads that share a key/value head become that head's
            # "query positions" (a reshape, no copy of the cache), and every one sees all cached
            # positions the mask allows. Same result as repeating the keys. Eager only: exporters
            # trace the repeat below (their fake SDPA outputs carry strides this reshape cannot view).
            qg = q.view(B, self.n_kv_head, groups, self.head_dim)
            y = F.scaled_dot_product_attention(qg, k, v, attn_mask=attn_mask, dropout_p=dropout)
            return self.o_proj(y.reshape(B, 1, -1))
        if groups > 1:
            # Each key/value head serves n_head / n_kv_head query heads. Written as
            # repeat_interleave rather than SDPA's enable_gqa so every exporter can trace it.
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        S = k.shape[2]
        if attn_mask is not None:  # the cache or caller knows better (rows of different lengths, static caches)
            mask, causal = attn_mask, False
        elif T == 1:
            mask, causal = None, False  # one new token sees every cached position
        elif S == T:
            mask, causal = None, True
        else:  # a chunk appended after a cached prefix: causal within the chunk
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
            causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    gate_up: nn.Module | None = None  # set by fuse_for_inference: gate and up projections as one matrix

    def forward(self, x):
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.post_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, start=0, attn_mask=None):
        x = x + self.drop(self.attn(self.input_norm(x), cos, sin, cache, layer, start, attn_mask))
        return x + self.drop(self.mlp(self.post_attn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rotary_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections write into the residual stream once per layer and sub-block:
        # scale them down so the stream's variance does not grow with depth (GPT-2 style).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    decode_step = None  # set by fuse_for_inference on a CPU: a one-token step in one C call

    batching = True  # rows at different positions can share a forward pass (through their cache)
    scores_last_only = True  # forward(..., last_only=True) skips the LM head but for the last position

    @property
    def device(self) -> torch.device:
        # The norm, not the embedding: a quantized model's embedding has no float matrix to ask.
        return self.norm.weight.device

    def forward(self, idx: torch.Tensor, cache: Cache | None = None, start: int = 0,
                last_only: bool = False) -> torch.Tensor:
        """Logits for every position of ``idx`` (batch, time). With a cache, ``idx`` continues
        the sequence at position ``start`` and its keys/values go into the cache; the cache may
        place rows at positions of their own (``Cache.positions`` / ``Cache.attn_mask``).
        ``last_only``: logits of the last position alone, (batch, 1, vocab) — what sampling needs;
        a prefill then skips the LM head (the largest matrix) for every other position."""
        T = idx.shape[1]
        if self.decode_step is not None and T == 1 and cache is not None and not torch.is_grad_enabled():
            logits = self.decode_step(idx, cache, start)  # None: this cache cannot lend its buffers
            if logits is not None:
                return logits
        positions = cache.positions(start, T) if cache is not None else None
        attn_mask = cache.attn_mask(start, T) if cache is not None else None
        if positions is not None:
            if int(positions.max()) >= self.cfg.context:
                raise ValueError(f"position {int(positions.max())} exceeds the context of {self.cfg.context}")
            cos = self.rope_cos[positions].unsqueeze(1)  # (batch, 1, time, head_dim): per row, all heads
            sin = self.rope_sin[positions].unsqueeze(1)
        else:
            if start + T > self.cfg.context:
                raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.cfg.context}")
            cos = self.rope_cos[start : start + T]
            sin = self.rope_sin[start : start + T]
        x = self.drop(self.embed(idx))
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, start, attn_mask)
        if cache is not None:
            cache.length = start + T
        if last_only:
            columns = cache.last_columns(T) if cache is not None else None
            x = x[:, -1:] if columns is None else x[torch.arange(x.shape[0], device=x.device), columns][:, None]
        return self.lm_head(self.norm(x))

    def fuse_for_inference(self) -> Transformer:
        """Inference with fewer, larger products: each block's q/k/v projections become one matrix
        product, and its gate/up projections another. The fused matrix holds the weights; the
        original layers keep views of its rows, so nothing is stored twice and state_dict keeps
        its names. Call it once the model is on its device (moving it afterwards separates the
        views). Layers of other kinds (LoRA adapters) are left as they are.

        On a CPU, decoding then runs as one C call per token step (genlab.kernels.decode: the
        whole step, every layer, with the model's own weights, for every row of the cache), when
        the C code can take every layer; the layers above compute everything else (prefill,
        training, caches that do not lend their buffers)."""
        for block in self.layers:
            attn, mlp = block.attn, block.mlp
            fused = fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj])
            if fused is not None:
                object.__setattr__(attn, "qkv", fused)  # not a submodule: its tensors are the layers' own
            fused = fuse_rows([mlp.gate_proj, mlp.up_proj])
            if fused is not None:
                object.__setattr__(mlp, "gate_up", fused)
        self.decode_step = c_decode_step(self)
        return self

    def new_cache(self, batch: int = 1, max_len: int | None = None, dtype=None) -> KVCache:
        # The norm's gain, not the embedding: a quantized embedding has no float matrix to ask.
        p = self.norm.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.context, p.device, dtype or p.dtype)
