"""Memory: weights in each storage format, the KV cache, inference and training totals.

All results are bytes. Formulas and their sources are in docs/sizing.md; the short version:

- weights: sum over parts of params x bits / 8, where a format sets bits per kind of tensor;
- KV cache: 2 (K and V) x layers x kv_heads x head_dim x positions x batch x bytes;
- training, full fine-tuning with PyTorch mixed precision and AdamW: fp32 weights, fp32 gradients,
  two fp32 moments, the bf16 weight copies autocast keeps, and the activations saved for backward
  (Korthikanti et al. 2022, generalised to GQA, gated MLPs and no dropout);
- LoRA: frozen 16-bit (or NF4 for QLoRA) weights plus the adapters' own full training state.
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.sizing.arch import Architecture
from genlab.sizing.counts import EMBEDDING, ROUTER, VECTOR, ParamCount

# GGUF block layouts (ggml's block_q* structs): bits per weight including the block scales.
Q8_0, Q4_0, Q4_K, Q5_K, Q6_K = 34 * 8 / 32, 18 * 8 / 32, 144 * 8 / 256, 176 * 8 / 256, 210 * 8 / 256


@dataclass(frozen=True)
class WeightFormat:
    """Bits per weight for each kind of tensor, and the precision its matmuls run at."""

    name: str
    linear: float  # matrices inside the transformer blocks
    embedding: float  # token (and position) tables
    head: float  # the untied LM head; a tied embedding takes this too, since it is also the output
    vector: float  # norms, biases and MoE routers, which no format quantises
    compute: str  # "fp32" | "fp16" | "int8"
    more_bits: float = 0.0  # K-quant "_M" mixtures: attn_v and ffn_down in some layers
    note: str = ""


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("fp32", 32, 32, 32, 32, "fp32"),
    WeightFormat("bf16", 16, 16, 16, 16, "fp16", note="16-bit; fp16 the same"),
    # bitsandbytes LLM.int8 / GPTQ / AWQ replace the blocks' nn.Linear layers; the embedding table and
    # the LM head stay 16-bit. Per-channel int8 scales add < 0.1%; int4 adds one fp16 scale per 128 weights.
    WeightFormat("int8", 8, 16, 16, 16, "int8", note="W8A8, LLM.int8"),
    WeightFormat("int4", 4 + 16 / 128, 16, 16, 16, "fp16",
                 note="GPTQ/AWQ g128"),
    # QLoRA's NF4 with double quantisation (Dettmers et al. 2023, section 3): 4 bits, an 8-bit absmax per
    # 64 weights, and a 32-bit constant per 256 of those.
    WeightFormat("nf4", 4 + 8 / 64 + 32 / (64 * 256), 16, 16, 16, "fp16", note="bitsandbytes, QLoRA"),
    # llama.cpp's quantize: 1-D tensors stay F32; output.weight gets Q6_K for every type below Q8_0;
    # Q4_K_M/Q5_K_M give attn_v and ffn_down Q6_K in the layers use_more_bits() picks.
    WeightFormat("Q8_0", Q8_0, Q8_0, Q8_0, 32, "int8", note="GGUF"),
    WeightFormat("Q6_K", Q6_K, Q6_K, Q6_K, 32, "int8", note="GGUF"),
    WeightFormat("Q5_K_M", Q5_K, Q5_K, Q6_K, 32, "int8", Q6_K, "GGUF mixture"),
    WeightFormat("Q4_K_M", Q4_K, Q4_K, Q6_K, 32, "int8", Q6_K, "GGUF mixture"),
    WeightFormat("Q4_0", Q4_0, Q4_0, Q6_K, 32, "int8", note="GGUF"),
)}
MAIN_FORMATS = ("fp32", "bf16", "int8", "int4", "Q8_0", "Q4_K_M")

# Bytes per cached element of each --kv-dtype; the names are common.KV_DTYPES (what SizeOptions accepts,
# checked equal in tests/test_sizing_memory.py).
KV_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "q8_0": Q8_0 / 8, "q4_0": Q4_0 / 8}


def use_more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that keep more bits in the _M mixtures: the first and last
    eighth, and every third layer in between."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def _bits(fmt: WeightFormat, kind: str, role: str, a: Architecture) -> float:
    if kind in (VECTOR, ROUTER):
        return fmt.vector
    if kind == EMBEDDING:
        return fmt.head if (a.tie_embeddings and role == "token") else fmt.embedding
    if role == "head":
        return fmt.head
    if fmt.more_bits and role in ("attn_v", "mlp_down"):
        more = sum(use_more_bits(i, a.n_layer) for i in range(a.n_layer))
        return (more * fmt.more_bits + (a.n_layer - more) * fmt.linear) / a.n_layer
    return fmt.linear


def weight_bytes(pc: ParamCount, fmt: WeightFormat | str, active_experts: float | None = None) -> float:
    """Bytes of the weights in ``fmt``. ``active_experts``: count only that many experts per MoE
    layer (what one decode step reads), instead of all of them."""
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    a = pc.arch
    total = 0.0
    for p in pc.parts:
        n = p.params
        if p.expert and active_experts is not None:
            n = n * active_experts / a.n_expert
        total += n * _bits(fmt, p.kind, p.role, a) / 8
    return total


def experts_touched(a: Architecture, batch: int) -> float:
    """Expected experts a decode step reads per layer when ``batch`` tokens each pick
    n_expert_active of n_expert (uniform routing): E * (1 - (1 - k/E)^batch)."""
    if not a.moe:
        return 0.0
    return a.n_expert * (1 - (1 - a.n_expert_active / a.n_expert) ** batch)


def kv_positions(a: Architecture, context: int) -> float:
    """Cached positions per layer, averaged over layers: windowed layers keep at most their window
    (Mistral's rolling buffer), the others keep the whole context."""
    windowed = min(context, a.sliding_window or context)
    return (a.n_sliding_layers * windowed + (a.n_layer - a.n_sliding_layers) * context) / a.n_layer


def kv_bytes_per_position(a: Architecture, kv_dtype: str = "fp16") -> float:
    """Bytes one token adds to the cache across all layers."""
    return 2 * a.n_layer * a.kv_width * KV_BYTES[kv_dtype]


def kv_cache_bytes(a: Architecture, context: int, batch: int = 1, kv_dtype: str = "fp16") -> float:
    return kv_bytes_per_position(a, kv_dtype) * kv_positions(a, context) * batch


def logits_bytes(a: Architecture, batch: int) -> float:
    # One step's fp32 logits; the other per-token activations of a decode step are far smaller.
    return 4.0 * batch * a.vocab_size


def inference_bytes(pc: ParamCount, fmt: str, context: int, batch: int = 1, kv_dtype: str = "fp16") -> dict:
    w = weight_bytes(pc, fmt)
    kv = kv_cache_bytes(pc.arch, context, batch, kv_dtype)
    lg = logits_bytes(pc.arch, batch)
    return {"weights": w, "kv_cache": kv, "logits": lg, "total": w + kv + lg}


# ---- training --------------------------------------------------------------------------------------

def layer_activation_elements(a: Architecture) -> tuple[float, float]:
    """Elements one layer saves for backward per token: (activation tensors, 1-byte dropout masks).

    Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198), section 4.1, count per layer
    34sbh + 5as^2b bytes for GPT with 16-bit activations and dropout. The same tally, per tensor:
    norm inputs; the QKV input; Q, K, V; the attention output (the out-projection input); the MLP
    input; its hidden tensors (2 without a gate, 4 with: gate, up, act(gate), the product).
    With GPT's shapes (H*hd = h, kv = h, F = 4h, two norms, dropout) it gives back 34sbh.
    """
    h, F = a.d_model, a.ffn_hidden
    per = a.norms_per_layer * h + h + a.attn_width + 2 * a.kv_width + a.attn_width + h
    per += (4 if a.gated_mlp else 2) * F * (a.n_expert_active if a.moe else 1)
    masks = 2 * h if a.dropout > 0 else 0  # after attention and after the MLP
    return per, masks


def layer_activation_bytes(a: Architecture, seq: int, batch: int, *, flash: bool = True,
                           bytes_per: float = 2.0) -> float:
    """One layer's saved activations for ``batch`` sequences of ``seq`` tokens."""
    per, masks = layer_activation_elements(a)
    layer = seq * batch * (per * bytes_per + masks)
    if not flash:
        # Softmax output; with dropout also its mask and the dropped-out copy AV reads (5 bytes at 16 bits).
        scores_bytes = 2 * bytes_per + 1 if a.dropout > 0 else bytes_per
        layer += a.n_head * seq * seq * batch * scores_bytes
    return layer


def activation_bytes(a: Architecture, seq: int, batch: int, *, flash: bool = True, recompute: bool = False,
                     bytes_per: float = 2.0) -> float:
    """Activations saved for backward over the whole model, for micro-batch ``batch`` x ``seq``.

    ``flash``: attention keeps no (seq x seq) scores (FlashAttention, PyTorch SDPA); else softmax
    output (16-bit) and its dropout mask are stored, Korthikanti's 5as^2b term.
    ``recompute``: full activation recomputation keeps each layer's input only (2sbh per layer),
    plus one layer's full set while it is recomputed during backward.
    The output layer keeps the final norm's input and output and the fp32 log-probabilities the loss needs.
    """
    tokens = seq * batch
    layer = layer_activation_bytes(a, seq, batch, flash=flash, bytes_per=bytes_per)
    output = tokens * (2 * a.d_model * bytes_per + 4 * a.vocab_size)
    if recompute:
        return a.n_layer * tokens * a.d_model * bytes_per + layer + output
    return a.n_layer * layer + output


@dataclass(frozen=True)
class TrainingMemory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_recompute: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def total_recompute(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations_recompute

    def as_dict(self) -> dict:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "activations_recompute": self.activations_recompute,
                "total": self.total, "total_recompute": self.total_recompute}


def full_finetune(pc: ParamCount, seq: int, batch: int, precision: str = "amp") -> TrainingMemory:
    """AdamW. ``amp``: PyTorch autocast to bf16: fp32 master weights (4 B) plus the bf16 copies
    autocast caches during forward (2 B), fp32 gradients (4 B), two fp32 moments (8 B), 16-bit
    activations. ``fp32``: no autocast (how genlab trains on CPUs): 4 + 4 + 8 B, fp32 activations.
    Either way 16 bytes per parameter of states, as ZeRO's 2+2+12 accounting also gives."""
    n, a = pc.total, pc.arch
    act_bytes = 2.0 if precision == "amp" else 4.0
    weights = n * (6.0 if precision == "amp" else 4.0)
    return TrainingMemory(
        weights, 4.0 * n, 8.0 * n,
        activation_bytes(a, seq, batch, bytes_per=act_bytes),
        activation_bytes(a, seq, batch, bytes_per=act_bytes, recompute=True),
    )


def lora_params(a: Architecture, rank: int) -> int:
    """Adapters A (rank x in) and B (out x rank) on every attention and MLP matrix of every layer
    (every expert too)."""
    d = a.d_model
    attn = (d + a.attn_width) * 2 + (d + a.kv_width) * 2
    mlp = (d + a.ffn_hidden) * (3 if a.gated_mlp else 2) * (a.n_expert or 1)
    return a.n_layer * rank * (attn + mlp)


def genlab_quant_bytes(pc: ParamCount, method: str, group_size: int = 32) -> float:
    """Bytes of a base quantized with genlab's own weight-only layers (``models.quantized``), as
    ``genlab finetune --method qlora`` and ``genlab shrink quantize`` hold it: every matrix, the
    embedding too, as int8 with one fp32 scale per row or int4 with one fp16 scale per
    ``group_size`` weights; norms fp32. (A tied head shares the embedding's integers.)"""
    # int8: one fp32 scale per row, ~d_model weights long
    bits = 8.0 + 32.0 / pc.arch.d_model if method == "int8" else 4.0 + 16.0 / group_size
    vectors = sum(p.params for p in pc.parts if p.kind == VECTOR)
    return (pc.total - vectors) * bits / 8 + 4.0 * vectors


def lora_saved_bytes(a: Architecture, rank: int, dropout: bool = True) -> float:
    """What peft's LoRA layers save for backward per token, beyond the frozen model's activations:
    on every adapted matrix the dropout output (fp32) and its mask (1 byte) of the input, and
    ``A x`` (rank values) for ``B``."""
    d = a.d_model
    inputs = d * 6 + a.ffn_hidden  # q, k, v, gate, up and o read d values; down reads ffn_hidden
    return a.n_layer * ((5.0 * inputs if dropout else 0.0) + 4.0 * rank * 7)


def genlab_finetune(pc: ParamCount, seq: int, batch: int, method: str, rank: int = 8,
                    quant: str = "int4", group_size: int = 32) -> TrainingMemory:
    """What ``genlab finetune`` holds on a CPU, where it trains in fp32 (no autocast):

    - ``full``: fp32 weights, gradients and AdamW moments (16 B per parameter), fp32 activations;
    - ``lora``: the frozen fp32 base plus the adapters' weights, gradients and moments (16 B each);
    - ``qlora``: the base as genlab's int4/int8 layers; while a layer runs, its weight exists once more
      as an fp32 matrix (dequantized in the forward and again in the backward pass), so the largest
      matrix (the tied LM head, usually) is counted on top.

    Activations: the full fine-tuning estimate, plus what the LoRA layers save (``lora_saved_bytes``,
    with genlab's default dropout), plus the gradient of the logits, which exists beside the saved
    activations when the backward pass starts (4 bytes x vocabulary per token)."""
    a = pc.arch
    tokens = seq * batch
    extra = tokens * 4.0 * a.vocab_size + (0.0 if method == "full" else tokens * lora_saved_bytes(a, rank))
    act = activation_bytes(a, seq, batch, bytes_per=4.0) + extra
    act_rc = activation_bytes(a, seq, batch, bytes_per=4.0, recompute=True) + extra
    if method == "full":
        n = pc.total
        return TrainingMemory(4.0 * n, 4.0 * n, 8.0 * n, act, act_rc)
    n_lora = lora_params(a, rank)
    if method == "lora":
        base = 4.0 * pc.total
    elif method == "qlora":
        largest = a.d_model * max(a.vocab_size, a.ffn_hidden, a.attn_width)
        base = genlab_quant_bytes(pc, quant, group_size) + 4.0 * largest
    else:
        raise ValueError(f"unknown fine-tuning method {method!r}")
    return TrainingMemory(base + 4.0 * n_lora, 4.0 * n_lora, 8.0 * n_lora, act, act_rc)


def lora(pc: ParamCount, seq: int, batch: int, rank: int = 16, base: str = "bf16") -> TrainingMemory:
    """Frozen base weights in format ``base`` ("bf16": LoRA, "nf4": QLoRA); the adapters carry fp32
    weights, gradients and AdamW moments (16 B each). Activations are those of full fine-tuning:
    the frozen layers still save what backward through them needs."""
    n_lora = lora_params(pc.arch, rank)
    act = activation_bytes(pc.arch, seq, batch)
    act_rc = activation_bytes(pc.arch, seq, batch, recompute=True)
    return TrainingMemory(weight_bytes(pc, base) + 4.0 * n_lora, 4.0 * n_lora, 8.0 * n_lora, act, act_rc)
