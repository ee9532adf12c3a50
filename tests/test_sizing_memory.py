"""Memory and compute formulas, checked against real tensors, PyTorch's FLOP counter and published figures."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from genlab.models.transformer import LMConfig, Transformer
from genlab.sizing import compute, count, from_lm_config, memory, resolve
from genlab.sizing.common import KV_DTYPES
from genlab.sizing.hardware import BY_KEY


def small_lm(**kw) -> LMConfig:
    base = dict(vocab_size=97, context=24, n_layer=2, n_head=4, n_kv_head=2, d_model=32, ffn_hidden=40)
    return LMConfig(**{**base, **kw})


@settings(max_examples=10, deadline=None)
@given(kv=st.integers(1, 3), groups=st.integers(1, 3), layers=st.integers(1, 3), batch=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_kv_cache_matches_genlab_cache(kv, groups, layers, batch, dtype):
    cfg = small_lm(n_head=kv * groups, n_kv_head=kv, d_model=8 * kv * groups, n_layer=layers)
    cache = Transformer(cfg).new_cache(batch, dtype=dtype)
    cache.reserve(cfg.context)  # a cache grows with what it holds: filled to the context here
    real = sum(t.nbytes for t in cache.k + cache.v)
    kv_dtype = "fp32" if dtype == torch.float32 else "bf16"
    assert memory.kv_cache_bytes(from_lm_config(cfg, "t"), cfg.context, batch, kv_dtype) == real


def test_sliding_window_caps_the_cache():
    mistral = resolve("mistral-7b")  # rolling buffer of 4096 positions (Jiang et al. 2023, section 2)
    assert memory.kv_cache_bytes(mistral, 32768) == memory.kv_cache_bytes(mistral, 4096)
    assert memory.kv_cache_bytes(mistral, 1000) < memory.kv_cache_bytes(mistral, 4096)
    llama = resolve("llama-2-7b")
    assert memory.kv_bytes_per_position(llama) == 2 * 32 * 4096 * 2  # the well-known 0.5 MiB per token


@pytest.mark.parametrize("seq, window", [(10, 4), (100, 100), (100, 7), (1, 3)])
def test_mean_attended_closed_form(seq, window):
    a = resolve("mistral-7b").__class__(**{**resolve("mistral-7b").__dict__, "sliding_window": window})
    brute = sum(min(t, window) for t in range(1, seq + 1)) / seq
    assert compute.mean_attended(a, seq) == pytest.approx(brute)


def test_korthikanti_activation_formula():
    """GPT with dropout and stored attention scores: 34sbh + 5as^2b bytes per layer (Korthikanti et al.
    2022, eq. 1), and 2sbh per layer under full recomputation."""
    a = resolve("gpt3-175b")
    assert a.dropout > 0
    s, b, h, heads = 2048, 1, a.d_model, a.n_head
    layer = memory.layer_activation_bytes(a, s, b, flash=False)
    assert layer == s * b * h * (34 + 5 * heads * s / h)
    output = s * b * (2 * h * 2 + 4 * a.vocab_size)
    full = memory.activation_bytes(a, s, b, flash=False)
    assert full == a.n_layer * layer + output
    recomputed = memory.activation_bytes(a, s, b, flash=False, recompute=True)
    assert recomputed == a.n_layer * 2 * s * b * h + layer + output


def test_gguf_sizes_match_published_files():
    """TheBloke/Llama-2-7B-GGUF, "Provided files" (https://huggingface.co/TheBloke/Llama-2-7B-GGUF):
    file sizes in GB. A file also holds the vocabulary and metadata (well under 0.1%)."""
    pc = count(resolve("llama-2-7b"))
    published = {"Q4_0": 3.83, "Q4_K_M": 4.08, "Q5_K_M": 4.78, "Q6_K": 5.53, "Q8_0": 7.16}
    for fmt, gb in published.items():
        assert memory.weight_bytes(pc, fmt) / 1e9 == pytest.approx(gb, abs=0.006), fmt


def test_k_quant_mixture_layers():
    # llama.cpp's README: Q4_K_M "uses Q6_K for half of the attention.wv and feed_forward.w2 tensors".
    assert sum(memory.use_more_bits(i, 32) for i in range(32)) == 16


def test_float_formats_are_exact_and_int_formats_keep_embeddings():
    pc = count(resolve("gemma-2b"))
    assert memory.weight_bytes(pc, "fp32") == 4 * pc.total
    assert memory.weight_bytes(pc, "bf16") == 2 * pc.total
    # int8 quantises the block matrices only: the 256K-row embedding table stays 16-bit.
    norms = 18 * 2 * 2048 + 2048  # two RMSNorms per layer and the final one; Gemma has no biases
    assert memory.weight_bytes(pc, "int8") == 2 * pc.total - 1 * (pc.non_embedding - norms)
    # QLoRA (Dettmers et al. 2023), section 3: double quantisation costs 0.127 bits per parameter.
    assert memory.FORMATS["nf4"].linear == pytest.approx(4.127, abs=1e-3)


def test_experts_touched():
    a = resolve("mixtral-8x7b")
    assert memory.experts_touched(a, 1) == pytest.approx(2)
    assert memory.experts_touched(a, 1000) == pytest.approx(8)
    pc = count(a)
    one = compute.decode_bytes_per_step(pc, "bf16", 1, 1, "fp16")
    assert one == pytest.approx(2 * pc.active + memory.kv_cache_bytes(a, 1), rel=1e-6)


def test_forward_flops_match_pytorch_counter():
    """2N + attention, per token, against torch's FLOP counter on genlab's model (math attention, which
    computes every query against every key, i.e. `positions` = sequence length)."""
    cfg = small_lm(tie_embeddings=True)
    model = Transformer(cfg)
    pc = count(from_lm_config(cfg, "t"))
    B, T = 2, cfg.context
    x = torch.randint(0, cfg.vocab_size, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fwd:
        logits = model(x)
    assert fwd.get_total_flops() == B * T * compute.forward_flops(pc, T)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as both:
        model(x).sum().backward()
    assert both.get_flop_counts()["Global"][torch.ops.aten.mm] == 3 * B * T * 2 * pc.matmul_active
    del logits


def test_roofline_crossover():
    """One sequence decodes at the bandwidth roof; a big enough batch reaches the compute roof."""
    pc, h100 = count(resolve("llama-2-7b")), BY_KEY["h100"]
    assert compute.decode_bound(pc, "bf16", h100, 16, batch=1).limit == "memory"
    big = compute.decode_bound(pc, "bf16", h100, 16, batch=4096)
    assert big.limit == "compute"
    assert big.tokens_per_s == pytest.approx(h100.flops["fp16"] / compute.forward_flops(pc, 16))


def test_training_memory_of_genlab_model_matches_real_tensors():
    """Gradients and AdamW moments of a real optimizer step: 4 + 8 bytes per parameter, tied weights once."""
    cfg = small_lm(tie_embeddings=True)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, cfg.vocab_size, (1, 8))).sum().backward()
    opt.step()
    pred = memory.full_finetune(count(from_lm_config(cfg, "t")), cfg.context, 1, precision="fp32")
    assert pred.gradients == sum(p.grad.nbytes for p in model.parameters())
    assert pred.optimizer == sum(opt.state[p][k].nbytes for p in model.parameters() for k in ("exp_avg", "exp_avg_sq"))


def test_every_kv_dtype_choice_has_a_size():
    assert tuple(memory.KV_BYTES) == KV_DTYPES  # SizeOptions validates against KV_DTYPES


@pytest.mark.parametrize("method,group", [("int4", 16), ("int8", 32)])
def test_genlab_quantized_base_bytes_match_the_quantized_model(method, group):
    """QLoRA's frozen base: the formula against the tensors genlab's own quantized layers hold."""
    from genlab.models.quantized import QuantSpec
    from genlab.optimize.quantize import quantize_model

    cfg = small_lm(vocab_size=96, d_model=64, ffn_hidden=128, n_head=4, n_kv_head=2)
    model = quantize_model(Transformer(cfg), QuantSpec(method, group))
    held = [*model.parameters(), *(b for n, b in model.named_buffers() if n.endswith(("qweight", "scale")))]
    tensors = {t.data_ptr(): t.nbytes for t in held}  # the tied head once; not the RoPE tables
    predicted = memory.genlab_quant_bytes(count(from_lm_config(cfg, "t")), method, group)
    assert predicted == pytest.approx(sum(tensors.values()), rel=0.02)


def test_genlab_finetune_memory_orders_the_methods():
    pc = count(from_lm_config(small_lm(vocab_size=512, d_model=128, ffn_hidden=256), "t"))
    full, lora, qlora = (memory.genlab_finetune(pc, 64, 2, m, rank=8) for m in ("full", "lora", "qlora"))
    assert full.weights == 4 * pc.total
    assert full.gradients == 4 * pc.total and full.optimizer == 8 * pc.total
    assert lora.gradients == qlora.gradients == 4 * memory.lora_params(pc.arch, 8)
    assert qlora.weights < lora.weights < full.total
