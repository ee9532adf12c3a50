"""Language models with quantized weights: the on-disk format, the integer arithmetic, and the modules
that hold such weights. A quantized run is built from these (``prepare_for_load``) before its weights
are read, so every runtime that opens runs can open quantized ones; ``genlab.optimize.quantize``
makes them.

Methods (all symmetric, round-to-nearest, no calibration data):

- ``int8``: weight-only, one scale per output channel (per row of the embedding). Scales fp32.
- ``int4``: weight-only, one scale per group of ``group_size`` consecutive input weights; two
  4-bit values packed per byte (low nibble = even column). Scales fp16, as GGUF and GPTQ keep them.
- ``dynamic-int8``: stored exactly like ``int8``; when loaded, the linear layers run PyTorch's own
  dynamic int8 kernels (fbgemm/x86: activations are quantized per call), which is faster on CPUs.

The embedding and every linear layer of the blocks and the LM head are quantized; the RMSNorm
gains stay fp32 (a few hundred numbers). A tied LM head shares the embedding's integer tensor, so it
is stored once.

On disk, ``model.safetensors`` holds for each quantized weight ``<module>.qweight`` (int8, or uint8
packed int4) and ``<module>.scale``; ``config.json`` gets a ``quantization`` section. No pickles.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab import kernels
from genlab.errors import ConfigError, RunError
from genlab.models.transformer import LMConfig, Transformer

METHODS = ("int8", "int4", "dynamic-int8")
INT4_MAX = 7  # symmetric: values in [-7, 7], so zero is exact and the range is balanced
INT8_MAX = 127


@dataclass
class QuantSpec:
    method: str = "int8"
    group_size: int = 32  # int4 only

    @property
    def bits(self) -> int:
        return 4 if self.method == "int4" else 8

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown quantization method '{self.method}'; choose one of: {', '.join(METHODS)}")
        if self.method == "int4" and (self.group_size <= 0 or self.group_size % 2):
            raise ConfigError(f"--group-size must be a positive even number (got {self.group_size})")

    def to_dict(self) -> dict:
        d = {"method": self.method, "bits": self.bits, "scheme": "symmetric"}
        if self.method == "int4":
            d.update(group_size=self.group_size, packing="2 per byte, low nibble first", scale_dtype="float16")
        else:
            d.update(granularity="per output channel", scale_dtype="float32")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        spec = cls(method=d.get("method", ""), group_size=int(d.get("group_size", 32)))
        spec.validate()
        return spec


# ---- the arithmetic -------------------------------------------------------------------------------

def _safe(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero row or group has scale 0; dividing by 1 instead leaves its values at exactly 0.
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 values and one fp32 scale per row; |w - q*s| <= s/2."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / INT8_MAX
    q = torch.round(w / _safe(scale)[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> packed uint8 (out, in/2) and fp16 scales (out, in/group_size)."""
    w = w.detach().float()
    rows, cols = w.shape
    if cols % group_size:
        raise ConfigError(f"--group-size {group_size} does not divide a weight's {cols} input columns; "
                          f"pick a divisor of {cols} (e.g. 32)")
    groups = w.view(rows, cols // group_size, group_size)
    # Round the scale to fp16 first and quantize with the stored value, so the error bound holds
    # for the numbers that are actually written.
    scale = (groups.abs().amax(dim=2) / INT4_MAX).half()
    q = torch.round(groups / _safe(scale.float())[..., None]).clamp(-INT4_MAX - 1, INT4_MAX)
    return pack_int4(q.view(rows, cols).to(torch.int8)), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], (rows, cols) with cols even -> uint8 (rows, cols/2), low nibble first."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # offset binary: -8..7 -> 0..15
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    lo = (p & 0x0F).to(torch.int8) - 8
    hi = (p >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Float weights from stored integers and scales (works on any leading rows, e.g. gathered ones)."""
    if bits == 8:
        return qweight.float() * scale.float()[..., None]
    q = unpack_int4(qweight).float()
    groups = scale.shape[-1]
    q = q.view(*q.shape[:-1], groups, -1) * scale.float()[..., None]
    return q.flatten(-2)


# ---- modules that hold quantized weights ----------------------------------------------------------

class _QuantWeight(nn.Module):
    """Integer weights + scales as buffers (so they go through state_dict and safetensors)."""

    def __init__(self, rows: int, cols: int, spec: QuantSpec) -> None:
        super().__init__()
        self.bits = spec.bits
        self.rows, self.cols = rows, cols
        if self.bits == 8:
            self.register_buffer("qweight", torch.zeros(rows, cols, dtype=torch.int8))
            self.register_buffer("scale", torch.zeros(rows, dtype=torch.float32))
        else:
            self.register_buffer("qweight", torch.zeros(rows, cols // 2, dtype=torch.uint8))
            self.register_buffer("scale", torch.zeros(rows, cols // spec.group_size, dtype=torch.float16))

    def set_from(self, w: torch.Tensor, spec: QuantSpec) -> None:
        q, s = quantize_int8(w) if self.bits == 8 else quantize_int4(w, spec.group_size)
        self.qweight, self.scale = q, s

    def share(self, other: _QuantWeight) -> None:
        """Use ``other``'s tensors (a tied LM head and embedding): stored once, loaded once."""
        self.qweight, self.scale = other.qweight, other.scale

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float matrix (for code that asks a layer for its weight, e.g. its device)."""
        return dequantize(self.qweight, self.scale, self.bits)

    def extra_repr(self) -> str:
        return f"{self.rows}, {self.cols}, int{self.bits}"


class _DequantLinear(torch.autograd.Function):
    """``x @ W.T`` for a frozen quantized ``W`` that is dequantized again in the backward pass, so
    autograd keeps the integer weights, not a float copy of every layer (what makes QLoRA lean)."""

    @staticmethod
    def forward(ctx, x, qweight, scale, bits):
        ctx.save_for_backward(qweight, scale)
        ctx.bits = bits
        return F.linear(x, dequantize(qweight, scale, bits).to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        qweight, scale = ctx.saved_tensors
        return grad @ dequantize(qweight, scale, ctx.bits).to(grad.dtype), None, None, None


class QuantLinear(_QuantWeight):
    """A bias-free linear layer whose weight is dequantized on the fly (weight-only quantization).
    The weight is never trained; gradients flow through it to the input (LoRA adapters on top)."""

    @property
    def in_features(self) -> int:
        return self.cols

    @property
    def out_features(self) -> int:
        return self.rows

    # genlab's CPU kernels (genlab.kernels) multiply by the integer weights directly instead of
    # building a float matrix per call; int4 ones take their scales as fp32, kept here once
    # (``prepare_kernels``). Elsewhere (GPUs, bf16, many rows) the weight is dequantized per call.
    kernel_scale: torch.Tensor | None = None
    use_kernels = True  # False: the reference path (dequantize per call), e.g. to measure against

    def prepare_kernels(self) -> None:
        self.kernel_scale = None
        if self.bits == 4 and self.qweight.device.type == "cpu":
            self.kernel_scale = self.scale.float().contiguous()

    def kernel_operands(self) -> tuple[int, torch.Tensor, torch.Tensor, int] | None:
        """(bits, integer weights, fp32 scales, int4 group size) for genlab's C decode step
        (genlab.kernels.decode), or None where its kernels cannot take this layer."""
        if not self.use_kernels or self.cols % 16:
            return None
        if self.bits == 8 and self.scale.dtype == torch.float32:
            return 8, self.qweight, self.scale, 0
        group = self.cols // self.scale.shape[-1]
        if self.bits == 4 and self.kernel_scale is not None and group % 32 == 0:
            return 4, self.qweight, self.kernel_scale, group
        return None

    @classmethod
    def fuse_rows(cls, layers: list[QuantLinear]) -> QuantLinear | None:
        """transformer.fuse_rows for quantized layers: their rows concatenated (scales are per row or
        per group within a row, so they concatenate the same way); the layers keep views."""
        first = layers[0]
        if any(m.bits != first.bits or m.cols != first.cols or m.scale.shape[1:] != first.scale.shape[1:]
               or m.scale.dtype != first.scale.dtype for m in layers):
            return None
        qweight, scale = torch.cat([m.qweight for m in layers]), torch.cat([m.scale for m in layers])
        fused = cls(qweight.shape[0], first.cols, QuantSpec("int8") if first.bits == 8 else
                    QuantSpec("int4", first.cols // first.scale.shape[-1]))
        fused.qweight, fused.scale = qweight, scale
        if first.kernel_scale is not None:
            fused.prepare_kernels()
        start = 0
        for m in layers:
            rows = slice(start, start + m.rows)
            m.qweight, m.scale = qweight[rows], scale[rows]
            if fused.kernel_scale is not None:
                m.kernel_scale = fused.kernel_scale[rows]
            start += m.rows
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _DequantLinear.apply(x, self.qweight, self.scale, self.bits)
        if self.use_kernels and kernels.usable(x, self.cols):
            flat = x.reshape(-1, self.cols)
            if self.bits == 8 and self.scale.dtype == torch.float32:
                return kernels.q8_matmul(flat, self.qweight, self.scale).view(*x.shape[:-1], self.rows)
            group = self.cols // self.scale.shape[-1]
            if self.bits == 4 and self.kernel_scale is not None and group % 32 == 0:
                return kernels.q4_matmul(flat, self.qweight, self.kernel_scale, group).view(*x.shape[:-1], self.rows)
        return F.linear(x, self.weight.to(x.dtype))


class QuantEmbedding(_QuantWeight):
    """An embedding that dequantizes only the rows it looks up."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return dequantize(self.qweight[idx], self.scale[idx], self.bits)


class DynamicInt8Linear(nn.Module):
    """PyTorch's dynamic int8 linear (int8 weights, activations quantized per call), built from our
    stored per-channel int8 values without re-quantizing them."""

    def __init__(self, src: QuantLinear) -> None:
        super().__init__()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
                import torch.ao.nn.quantized.dynamic as nnqd

                self.inner = nnqd.Linear(src.cols, src.rows, bias_=False, dtype=torch.qint8)
                zero = torch.zeros(src.rows, dtype=torch.long)
                qw = torch._make_per_channel_quantized_tensor(src.qweight.cpu(), src.scale.double().cpu(), zero, 0)
                self.inner.set_weight_bias(qw, None)
        except (ImportError, RuntimeError, AttributeError) as e:
            raise RunError(f"this PyTorch build cannot run dynamic int8 ({e.__class__.__name__}); "
                           f"load the run on CPU, or quantize with --method int8") from None
        self.src = src  # kept for .weight (dequantized view) and saving

    @property
    def weight(self) -> torch.Tensor:
        return self.src.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


def linear_names(model: Transformer) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def check_shapes(cfg: LMConfig, spec: QuantSpec) -> None:
    if spec.method != "int4":
        return
    for what, cols in (("d_model", cfg.d_model), ("ffn_hidden", cfg.ffn_hidden),
                       ("n_head * head_dim", cfg.n_head * cfg.head_dim)):
        if cols % spec.group_size:
            raise ConfigError(f"--group-size {spec.group_size} does not divide {what} = {cols}; "
                              f"pick a divisor (e.g. 32, 16 or 8)")


def prepare_for_load(model: Transformer, section: dict) -> Transformer:
    """Give a freshly built model the structure of a quantized run so load_weights can fill it."""
    spec = QuantSpec.from_dict(section)
    emb = QuantEmbedding(model.cfg.vocab_size, model.cfg.d_model, spec)
    for name in linear_names(model):
        lin: nn.Linear = model.get_submodule(name)
        q = QuantLinear(lin.out_features, lin.in_features, spec)
        if name == "lm_head" and model.cfg.tie_embeddings:
            q.share(emb)
        replace_module(model, name, q)
    model.embed = emb
    return model


def finish_load(model: Transformer, section: dict, use_kernels: bool = True) -> Transformer:
    """After the weights are in (and on their device): int8/int4 layers run genlab's kernels
    (``use_kernels``; False: dequantize per call, the reference path); dynamic-int8 runs' linear
    layers switch to PyTorch's dynamic int8 kernels."""
    if section.get("method") != "dynamic-int8":
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.use_kernels = use_kernels
                m.prepare_kernels()
        return model
    if model.norm.weight.device.type != "cpu":
        raise RunError("dynamic-int8 runs use PyTorch's CPU int8 kernels; load them with --device cpu "
                       "(or quantize with --method int8 for other devices)")
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear):
            replace_module(model, name, DynamicInt8Linear(m))
    return model


def dequantized(model: Transformer) -> Transformer:
    """A plain float Transformer with the quantized model's (dequantized) weights, e.g. for export."""
    out = Transformer(LMConfig.from_dict(model.cfg.to_dict())).eval()
    with torch.no_grad():
        out.embed.weight.copy_(model.embed.weight)
        for name, m in out.named_modules():
            if isinstance(m, nn.Linear) and not (name == "lm_head" and out.cfg.tie_embeddings):
                m.weight.copy_(model.get_submodule(name).weight)
        src = dict(model.named_parameters())
        for name, p in out.named_parameters():
            if name in src and p.dim() == 1:  # the RMSNorm gains
                p.copy_(src[name])
    return out
