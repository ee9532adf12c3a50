"""Compute: FLOPs per token, training FLOPs and time, and roofline bounds on tokens/s.

A forward pass costs 2 FLOPs per weight a token is multiplied by (a multiply and an add), plus
attention: QK^T and AV each cost 2 * n_head * head_dim FLOPs per attended position and layer.
Backward costs twice the forward, so training is 3x forward: the 6ND rule (Kaplan et al. 2020,
https://arxiv.org/abs/2001.08361, Table 1; Hoffmann et al. 2022, https://arxiv.org/abs/2203.15556).
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.sizing import memory
from genlab.sizing.arch import Architecture
from genlab.sizing.counts import ParamCount
from genlab.sizing.hardware import Device, peak

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022, Table 3: 70B params -> 1.4T tokens


def attended(a: Architecture, position: int) -> float:
    """Positions the token at ``position`` (1-based) attends to, averaged over layers."""
    return memory.kv_positions(a, position)


def mean_attended(a: Architecture, seq: int) -> float:
    """Average over a causal sequence of ``seq`` tokens of the positions each token attends to:
    (seq + 1) / 2 without a window; a window W < seq caps it at W."""
    full = (seq + 1) / 2
    if not a.sliding_window or a.sliding_window >= seq:
        return full
    w = a.sliding_window
    windowed = (w * (w + 1) / 2 + (seq - w) * w) / seq
    return (a.n_sliding_layers * windowed + (a.n_layer - a.n_sliding_layers) * full) / a.n_layer


def attention_flops(a: Architecture, positions: float) -> float:
    return 4.0 * a.n_layer * a.attn_width * positions


def forward_flops(pc: ParamCount, positions: float) -> float:
    """Forward FLOPs of one token attending to ``positions`` earlier tokens (itself included)."""
    return 2.0 * pc.matmul_active + attention_flops(pc.arch, positions)


def forward_flops_mean(pc: ParamCount, seq: int) -> float:
    """Forward FLOPs per token, averaged over a causal sequence of ``seq`` tokens (what prefill and
    training pay). The attention part equals Kaplan's 2 * n_layer * n_ctx * d_attn."""
    return forward_flops(pc, mean_attended(pc.arch, seq))


def training_flops(pc: ParamCount, tokens: float, seq: int) -> float:
    return 3.0 * tokens * forward_flops_mean(pc, seq)


def six_nd(pc: ParamCount, tokens: float) -> float:
    return 6.0 * pc.active * tokens


def chinchilla_tokens(pc: ParamCount) -> float:
    return CHINCHILLA_TOKENS_PER_PARAM * pc.total


def training_seconds(flops: float, device: Device, mfu: float, precision: str = "fp16") -> float:
    rate, _ = peak(device, precision)
    return flops / (rate * mfu) if rate else float("inf")


@dataclass(frozen=True)
class Bound:
    tokens_per_s: float
    limit: str  # "memory" or "compute"
    bytes_per_step: float = 0.0
    flops_per_token: float = 0.0


def decode_bytes_per_step(pc: ParamCount, fmt: str, context: int, batch: int, kv_dtype: str) -> float:
    """Bytes one decode step reads: the weights it uses (for a mixture, the experts the batch is
    routed to) and the whole KV cache of every sequence."""
    a = pc.arch
    experts = memory.experts_touched(a, batch) if a.moe else None
    return memory.weight_bytes(pc, fmt, experts) + memory.kv_cache_bytes(a, context, batch, kv_dtype)


def decode_bound(pc: ParamCount, fmt: str, device: Device, context: int, batch: int = 1,
                 kv_dtype: str = "fp16") -> Bound:
    """Upper bound on decode tokens/s (all sequences together) for a token at position ``context``:
    the smaller of bandwidth / bytes read per step and peak compute / FLOPs per step."""
    step_bytes = decode_bytes_per_step(pc, fmt, context, batch, kv_dtype)
    flops = forward_flops(pc, attended(pc.arch, context))
    by_memory = batch * device.bandwidth_gbs * 1e9 / step_bytes
    rate, _ = peak(device, memory.FORMATS[fmt].compute)
    by_compute = rate / flops if rate else 0.0
    if by_compute and by_compute < by_memory:
        return Bound(by_compute, "compute", step_bytes, flops)
    return Bound(by_memory, "memory", step_bytes, flops)


def prefill_bound(pc: ParamCount, fmt: str, device: Device, seq: int) -> Bound:
    """Upper bound on prompt-processing tokens/s: peak compute at the format's matmul precision over
    the mean forward FLOPs per token of a ``seq``-token prompt."""
    flops = forward_flops_mean(pc, seq)
    rate, _ = peak(device, memory.FORMATS[fmt].compute)
    return Bound(rate / flops, "compute", flops_per_token=flops)
