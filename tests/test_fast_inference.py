"""The fast inference path gives what the reference path gives: genlab's int8/int4 kernels against
dequantize-then-multiply, fused projections against separate ones, last-position logits, the
growing KV caches, and whole greedy generations of float and quantized runs (speed is measured in
BENCHMARKS.md, never here)."""

from __future__ import annotations

import pytest
import torch

from genlab import kernels
from genlab.generate.text import load_lm
from genlab.models.quantized import QuantLinear, QuantSpec, dequantize, quantize_int4, quantize_int8
from genlab.models.transformer import KVCache, LMConfig, Transformer, cache_capacity
from genlab.studio.batching import BatchScheduler

from .sched_helpers import greedy, stream_all

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="no C compiler here for genlab's CPU kernels")


@pytest.fixture(scope="module")
def quantized_runs(trained_run, tmp_path_factory):
    from genlab.optimize.quantize import quantize_run

    out = tmp_path_factory.mktemp("fastq")
    runs = {"fp32": trained_run}
    for method in ("int8", "int4"):
        runs[method] = out / method
        quantize_run(trained_run, runs[method], QuantSpec(method=method, group_size=32))
    return runs


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 16])
def test_kernels_match_dequantized_products(rows):
    torch.manual_seed(rows)
    w, x = torch.randn(96, 128), torch.randn(rows, 128)
    q, s = quantize_int8(w)
    assert torch.allclose(kernels.q8_matmul(x, q, s), x @ dequantize(q, s, 8).T, atol=1e-4, rtol=1e-4)
    for group in (32, 64):
        p, s4 = quantize_int4(w, group)
        got = kernels.q4_matmul(x, p, s4.float().contiguous(), group)
        assert torch.allclose(got, x @ dequantize(p, s4, 4).T, atol=1e-4, rtol=1e-4)


@needs_kernels
def test_quant_linear_uses_the_kernel_within_its_row_limit_and_dequantizes_beyond():
    spec = QuantSpec("int4", 32)
    layer = QuantLinear(48, 64, spec)
    layer.set_from(torch.randn(48, 64), spec)
    layer.prepare_kernels()
    for rows in (1, kernels.MAX_ROWS, kernels.MAX_ROWS + 1):
        x = torch.randn(1, rows, 64)
        with torch.no_grad():
            fast = layer(x)
            layer.use_kernels = False
            ref = layer(x)
            layer.use_kernels = True
        assert fast.shape == (1, rows, 48)
        assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-4)


def test_fused_projections_keep_weights_names_and_outputs():
    torch.manual_seed(0)
    model = Transformer(LMConfig(vocab_size=50, context=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ref = model(idx)
        model.fuse_for_inference()
        fused = model(idx)
    assert model.layers[0].attn.qkv is not None and model.layers[0].mlp.gate_up is not None
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in Transformer(model.cfg).parameters())
    assert torch.allclose(fused, ref, atol=1e-5)


def test_last_only_logits_and_one_token_attention_match_the_full_pass():
    torch.manual_seed(1)
    model = Transformer(LMConfig(vocab_size=40, context=64, n_layer=2, n_head=6, n_kv_head=2, d_model=48)).eval()
    idx = torch.randint(0, 40, (3, 12))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(3)
        last = model(idx[:, :8], cache, 0, last_only=True)
        assert last.shape == (3, 1, 40)
        assert torch.allclose(last[:, 0], full[:, 7], atol=1e-5)
        for t in range(8, 12):  # one token at a time: the grouped-query reshape path
            step = model(idx[:, t : t + 1], cache, t, last_only=True)
            assert torch.allclose(step[:, 0], full[:, t], atol=1e-5)


def test_kv_cache_grows_with_the_tokens_held_not_the_context():
    cfg = LMConfig(vocab_size=40, context=2048, n_layer=1, n_head=2, n_kv_head=1, d_model=16)
    cache = KVCache(cfg, 1, cfg.context, "cpu", torch.float32)
    assert cache.capacity == 0
    k = torch.zeros(1, 1, 10, 8)
    cache.update(0, k, k, 0)
    assert cache.capacity == 256
    cache.update(0, k[:, :, :1], k[:, :, :1], 300)
    assert cache.capacity == 512
    assert [cache_capacity(n, 2048) for n in (1, 256, 257, 1500, 2048)] == [256, 256, 512, 2048, 2048]
    with pytest.raises(ValueError, match="exceeds"):
        cache.reserve(2049)


@pytest.mark.parametrize("method", ["fp32", "int8", "int4"])
def test_fast_path_generates_what_the_reference_path_generates(quantized_runs, method, one_thread):
    fast = load_lm(quantized_runs[method], device="cpu")
    ref = load_lm(quantized_runs[method], device="cpu", fast=False)
    assert fast.model.layers[0].attn.qkv is not None and ref.model.layers[0].attn.qkv is None
    assert (fast.model.decode_step is not None) == kernels.available() and ref.model.decode_step is None
    for prompt in ("The cat", "Every morning the small bird"):
        # 80 tokens with a 64-token context: the window shift is crossed too.
        kw = dict(max_tokens=80, temperature=0, ignore_eot=True)
        assert fast.generate(prompt, **kw) == ref.generate(prompt, **kw)
    idx = torch.tensor([fast.encode("Old dog ran far away")])
    with torch.no_grad():
        assert torch.allclose(fast.model(idx), ref.model(idx), atol=1e-3)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_c_decode_step_equals_the_layers_step_by_step(threads):
    """The whole step in C (kernels/decode.c) against the model's own layers, one token at a time
    past the cache's first growth (256 positions), with 3 query heads per key/value head."""
    torch.manual_seed(2)
    cfg = LMConfig(vocab_size=70, context=300, n_layer=2, n_head=6, n_kv_head=2, d_model=96)
    ref = Transformer(cfg).eval()
    fast = Transformer(cfg).eval()
    fast.load_state_dict(ref.state_dict())
    fast.fuse_for_inference()
    assert fast.decode_step is not None
    idx = torch.randint(0, 70, (1, 290))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            full = ref(idx)
            c_ref, c_fast = ref.new_cache(1), fast.new_cache(1)
            assert torch.allclose(fast(idx[:, :5], c_fast, 0), ref(idx[:, :5], c_ref, 0), atol=1e-5)  # prefill: layers
            for t in range(5, 290):
                step = fast(idx[:, t : t + 1], c_fast, t)
                assert step.shape == (1, 1, 70) and c_fast.length == t + 1
                assert torch.allclose(step[0, 0], full[0, t], atol=1e-4), t
                assert torch.allclose(step, ref(idx[:, t : t + 1], c_ref, t), atol=1e-4), t
            assert c_fast.capacity == 300 and torch.allclose(c_fast.k[1][:, :, :290], c_ref.k[1][:, :, :290], atol=1e-5)
    finally:
        torch.set_num_threads(before)


@needs_kernels
def test_c_decode_step_takes_batches_and_leaves_other_caches_to_the_layers():
    torch.manual_seed(3)
    model = Transformer(LMConfig(vocab_size=40, context=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32)).eval()
    model.fuse_for_inference()
    calls = []
    step = model.decode_step
    model.decode_step = lambda *a: calls.append(a) or step(*a)
    idx = torch.randint(0, 40, (6, 9))  # 6 rows: more than the 4 that share one pass over a weight row
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(6)
        model(idx[:, :5], cache, 0)
        for t in range(5, 9):
            assert torch.allclose(model(idx[:, t : t + 1], cache, t)[:, 0], full[:, t], atol=1e-5)
        assert len(calls) == 4 and cache.length == 9

        class Lends(KVCache):
            def kernel_buffers(self, start):
                return None

        cache = Lends(model.cfg, 6, 32, "cpu", torch.float32)
        model(idx[:, :8], cache, 0)
        assert torch.allclose(model(idx[:, 8:], cache, 8)[:, 0], full[:, 8], atol=1e-5) and len(calls) == 5


def test_batched_cache_holds_only_what_is_in_flight(trained_run, one_thread):
    lm = load_lm(trained_run, device="cpu")
    sched = BatchScheduler(lm, max_batch=8)
    seen: list[tuple[int, int, int, int]] = []  # (rows allocated, positions allocated, active, longest)
    original = sched._step

    def watched_step() -> None:
        original()
        cache = sched._cache
        if cache is not None and sched._active:
            n = len(sched._active)
            seen.append((*cache.shape, n, int(cache.pos[:n].max())))

    sched._step = watched_step
    try:
        prompts = ["The cat", "A", "Old dog ran far away into the", "Every"]
        out = stream_all(sched, prompts, lambda i: greedy(12 + 6 * i))
        for i, p in enumerate(prompts):
            assert out[i] == lm.generate(p, max_tokens=12 + 6 * i, temperature=0, ignore_eot=True)
        assert seen
        for rows, positions, active, longest in seen:
            # Buffers follow what is in flight (within a factor of two: they grow and shrink by doubling).
            assert rows <= 2 * cache_capacity(active, 8, smallest=1)
            assert positions <= 2 * cache_capacity(longest + 1, lm.config.context)
        assert sched._cache.nbytes() == 0  # nothing in flight: nothing held
    finally:
        sched.close()
