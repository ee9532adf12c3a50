"""The whole decoding step of one sequence in one C call (decode.c), for models on the CPU.

``decode_step(model)`` describes a fused ``Transformer``'s weights to the C code once (pointers to
the model's own tensors: nothing is copied) and returns a callable that replaces the forward pass
for one new token of one sequence with a ``KVCache``; None when the model has something the C code
does not do (weights that are not fp32/int8/int4 genlab layers, e.g. LoRA adapters or bf16, a
GPU, no compiler), and the model then runs its layers as usual.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from genlab import kernels

F32, Q8, Q4 = 0, 1, 2


class _Linear(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("rows", ctypes.c_int), ("cols", ctypes.c_int), ("group", ctypes.c_int),
                ("weight", ctypes.c_void_p), ("scale", ctypes.c_void_p)]


class _Layer(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_attn_norm", ctypes.c_void_p),
                ("qkv", _Linear), ("o", _Linear), ("gate_up", _Linear), ("down", _Linear)]


class _Model(ctypes.Structure):
    _fields_ = [("n_layer", ctypes.c_int), ("d_model", ctypes.c_int), ("n_head", ctypes.c_int),
                ("n_kv_head", ctypes.c_int), ("head_dim", ctypes.c_int), ("ffn", ctypes.c_int),
                ("vocab", ctypes.c_int), ("eps", ctypes.c_float), ("rope_cos", ctypes.c_void_p),
                ("rope_sin", ctypes.c_void_p), ("final_norm", ctypes.c_void_p), ("lm_head", _Linear),
                ("layers", ctypes.POINTER(_Layer))]


def _fp32_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def _linear(m: nn.Module | None, keep: list) -> _Linear | None:
    """The C description of a bias-free linear layer, or None if the C code cannot run it."""
    if type(m) is nn.Linear and m.bias is None and _fp32_cpu(m.weight):
        keep.append(m.weight)
        return _Linear(F32, m.out_features, m.in_features, 0, m.weight.data_ptr(), None)
    operands = getattr(m, "kernel_operands", None)
    found = operands() if operands is not None else None
    if found is None:
        return None
    bits, qweight, scale, group = found
    if not (qweight.device.type == "cpu" and qweight.is_contiguous() and _fp32_cpu(scale)):
        return None
    keep += [qweight, scale]
    return _Linear(Q8 if bits == 8 else Q4, qweight.shape[0], m.cols, group, qweight.data_ptr(), scale.data_ptr())


class DecodeStep:
    """``step(idx, cache, start)``: logits (1, 1, vocab) for the one token ``idx`` (1, 1) at position
    ``start``, its keys and values written into ``cache`` — what ``Transformer.forward`` returns."""

    def __init__(self, model: nn.Module, desc: _Model, keep: list, layers) -> None:
        self.model, self.desc, self._keep, self._layers = model, desc, keep, layers
        self._lib = kernels.library()
        self._views: tuple | None = None  # (capacity, key pointers, value pointers, scratch)

    def __call__(self, idx: torch.Tensor, cache, start: int) -> torch.Tensor:
        cfg = self.model.cfg
        if self.model.norm.weight.data_ptr() != self.desc.final_norm:
            # The model was moved or cast since (its tensors are new ones): run its layers from now on.
            self.model.decode_step = None
            return self.model(idx, cache, start)
        if start + 1 > cfg.context:
            raise ValueError(f"sequence of {start + 1} tokens exceeds the context of {cfg.context}")
        cache.reserve(start + 1)
        x = self.model.embed(idx).reshape(-1).float().contiguous()
        cap = cache.capacity
        if self._views is None or self._views[0] != cap or self._views[1][0] != cache.k[0].data_ptr():
            pointers = ctypes.c_void_p * cfg.n_layer
            scratch = torch.empty(self._lib.gl_decode_scratch(ctypes.byref(self.desc), cap - 1))
            self._views = (cap, pointers(*[t.data_ptr() for t in cache.k]), pointers(*[t.data_ptr() for t in cache.v]),
                           scratch, list(cache.k) + list(cache.v))
        _, k_ptrs, v_ptrs, scratch, _ = self._views
        logits = torch.empty(cfg.vocab_size)
        self._lib.gl_decode(ctypes.byref(self.desc), x.data_ptr(), start, k_ptrs, v_ptrs, cap, logits.data_ptr(),
                            scratch.data_ptr(), torch.get_num_threads())
        cache.length = start + 1
        return logits.view(1, 1, -1)


def decode_step(model: nn.Module) -> DecodeStep | None:
    """The C step for a fused Transformer (``fuse_for_inference``) on the CPU, or None."""
    lib = kernels.library()
    if lib is None or not hasattr(lib, "gl_decode") or not _fp32_cpu(model.norm.weight):
        return None
    cfg, keep = model.cfg, []
    layers = (_Layer * cfg.n_layer)()
    for i, block in enumerate(model.layers):
        parts = [_linear(block.attn.qkv, keep), _linear(block.attn.o_proj, keep),
                 _linear(block.mlp.gate_up, keep), _linear(block.mlp.down_proj, keep)]
        norms = [block.input_norm.weight, block.post_attn_norm.weight]
        if any(p is None for p in parts) or not all(_fp32_cpu(n) for n in norms):
            return None
        keep += norms
        layers[i] = _Layer(norms[0].data_ptr(), norms[1].data_ptr(), *parts)
    head = _linear(model.lm_head, keep)
    if head is None or not (_fp32_cpu(model.rope_cos) and _fp32_cpu(model.rope_sin)):
        return None
    keep += [model.norm.weight, model.rope_cos, model.rope_sin]
    desc = _Model(cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.ffn_hidden,
                  cfg.vocab_size, cfg.norm_eps, model.rope_cos.data_ptr(), model.rope_sin.data_ptr(),
                  model.norm.weight.data_ptr(), head, layers)
    return DecodeStep(model, desc, keep, layers)
