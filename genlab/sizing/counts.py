"""Exact parameter counts, part by part, of an :class:`~genlab.sizing.arch.Architecture`.

Every part records what kind of tensor it is, because the other calculations need it: memory
formats quantise matrices but keep vectors (norms, biases) at high precision; FLOPs come from
matrices only; GGUF's K-quant mixtures give the value and down projections more bits. A tied
LM head shares the token embedding's storage, so it is counted once (as the embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.sizing.arch import Architecture

EMBEDDING, LINEAR, VECTOR, ROUTER = "embedding", "linear", "vector", "router"


@dataclass(frozen=True)
class Part:
    name: str
    params: int  # over all layers
    kind: str  # EMBEDDING | LINEAR | VECTOR | ROUTER
    role: str = ""  # "token", "position", "head", "attn_v", "mlp_down": what GGUF mixtures key on
    expert: bool = False  # held n_expert times; a token runs n_expert_active of them


@dataclass(frozen=True)
class ParamCount:
    arch: Architecture
    parts: tuple[Part, ...]

    def _sum(self, parts) -> int:
        return sum(p.params for p in parts)

    def _active(self, p: Part) -> int:
        if not p.expert:
            return p.params
        return p.params // self.arch.n_expert * self.arch.n_expert_active

    @property
    def total(self) -> int:
        return self._sum(self.parts)

    @property
    def embedding(self) -> int:
        """Token and position tables (Kaplan et al. 2020 leave them out of N)."""
        return self._sum(p for p in self.parts if p.kind == EMBEDDING)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active(self) -> int:
        """Parameters one token uses: all of them, less the experts a mixture does not route it to."""
        return sum(self._active(p) for p in self.parts)

    @property
    def expert_params(self) -> int:
        return self._sum(p for p in self.parts if p.expert)

    @property
    def matmul_active(self) -> int:
        """Weights each token is multiplied by: every active matrix, and the LM head even when it is
        the (tied) embedding table. Twice this is the forward FLOPs per token outside attention."""
        n = sum(self._active(p) for p in self.parts if p.kind in (LINEAR, ROUTER))
        return n + (self.arch.d_model * self.arch.vocab_size if self.arch.tie_embeddings else 0)

    def of(self, role: str) -> int:
        return self._sum(p for p in self.parts if p.role == role)

    def rows(self) -> list[tuple[str, int]]:
        return [(p.name, p.params) for p in self.parts if p.params]


def _norm(a: Architecture, width: int) -> int:
    return width * (2 if a.norm == "layer" else 1)


def _mlp_parts(a: Architecture) -> list[Part]:
    d, f, L = a.d_model, a.ffn_hidden, a.n_layer
    copies = a.n_expert or 1
    prefix = f"experts ({a.n_expert} x) " if a.moe else "MLP "
    names = ("gate", "up", "down") if a.gated_mlp else ("in", "out")
    parts = [Part(prefix + n, L * copies * d * f, LINEAR, "mlp_down" if n in ("down", "out") else "", a.moe)
             for n in names]
    if a.mlp_bias:
        per = (len(names) - 1) * f + d
        parts.append(Part(prefix + "biases", L * copies * per, VECTOR, expert=a.moe))
    if a.moe:
        parts.append(Part("router", L * d * a.n_expert, ROUTER))
    return parts


def count(a: Architecture) -> ParamCount:
    d, L, V = a.d_model, a.n_layer, a.vocab_size
    q, kv = a.attn_width, a.kv_width
    parts = [Part("token embedding", V * d, EMBEDDING, "token")]
    if a.learned_positions:
        parts.append(Part("position embedding", a.context * d, EMBEDDING, "position"))
    parts += [
        Part("attention q", L * d * q, LINEAR),
        Part("attention k", L * d * kv, LINEAR),
        Part("attention v", L * d * kv, LINEAR, "attn_v"),
        Part("attention out", L * q * d, LINEAR),
        Part("attention biases", L * ((q + 2 * kv) * a.qkv_bias + d * a.out_bias), VECTOR),
    ]
    if a.qk_norm:
        # Phi's qk_layernorm normalises each head over d_model // n_head features.
        parts.append(Part("q/k norms", L * 2 * _norm(a, d // a.n_head), VECTOR))
    parts += _mlp_parts(a)
    parts.append(Part("norms", L * a.norms_per_layer * _norm(a, d) + _norm(a, d), VECTOR))
    if not a.tie_embeddings:
        parts.append(Part("LM head", d * V, LINEAR, "head"))
    if a.lm_head_bias:
        parts.append(Part("LM head bias", V, VECTOR))
    return ParamCount(a, tuple(p for p in parts if p.params))
