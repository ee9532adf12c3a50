"""The whole decoding step in one C call (decode.c), for models on the CPU.

``decode_step(model)`` describes a fused ``Transformer``'s weights to the C code once (pointers to
the model's own tensors: nothing is copied) and returns a callable that replaces the forward pass
for one new token in each row of a cache that lends its buffers (a ``KVCache``, the server's batch
cache), every row at its own position; None when the model has something the C code
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
    """``step(idx, cache, start)``: logits (rows, 1, vocab) for one new token per row, ``idx`` (rows,
    1), their keys and values written into ``cache`` — what ``Transformer.forward`` returns — or None
    when the cache cannot lend its buffers (``Cache.kernel_buffers``) and the layers must run."""

    def __init__(self, model: nn.Module, desc: _Model, keep: list, layers) -> None:
        self.model, self.desc, self._keep, self._layers = model, desc, keep, layers
        self._lib = kernels.library()
        self._pointers: tuple | None = None  # (the last cache's tensors, key pointers, value pointers)
        self._scratch = torch.empty(0)

    def __call__(self, idx: torch.Tensor, cache, start: int) -> torch.Tensor | None:
        cfg, n = self.model.cfg, idx.shape[0]
        if self.model.norm.weight.data_ptr() != self.desc.final_norm:
            self.model.decode_step = None  # the model was moved or cast since: its tensors are new ones
            return None
        buffers = cache.kernel_buffers(start)
        if buffers is None:
            return None
        k, v, pos = buffers
        if k[0].dtype != torch.float32 or k[0].device.type != "cpu" or k[0].shape[0] < n or len(pos) != n:
            return None
        last = int(pos.max())
        if last >= cfg.context:
            raise ValueError(f"position {last} exceeds the context of {cfg.context}")
        held = [*k, *v]  # the tensors themselves are kept: their addresses stay theirs while cached here
        if self._pointers is None or any(a is not b for a, b in zip(self._pointers[0], held, strict=True)):
            array = ctypes.c_void_p * cfg.n_layer
            self._pointers = (held, array(*[t.data_ptr() for t in k]), array(*[t.data_ptr() for t in v]))
        _, k_ptrs, v_ptrs = self._pointers
        need = self._lib.gl_decode_scratch(ctypes.byref(self.desc), n, last)
        if self._scratch.numel() < need:
            self._scratch = torch.empty(2 * need)  # room to grow: positions advance every step
        x = self.model.embed(idx).reshape(n, cfg.d_model).float().contiguous()
        pos = pos.to(torch.int64).contiguous()
        logits = torch.empty(n, cfg.vocab_size)
        self._lib.gl_decode(ctypes.byref(self.desc), x.data_ptr(), n, pos.data_ptr(), k_ptrs, v_ptrs, k[0].shape[2],
                            logits.data_ptr(), self._scratch.data_ptr(), torch.get_num_threads())
        cache.length = start + 1
        return logits.view(n, 1, -1)


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
