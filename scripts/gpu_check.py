"""GPU check of the inference fast path, run by scripts/gpu_check.sh on a machine with CUDA.

Only PyTorch and genlab's model code are needed (no tokenizer, no data): a Llama-style model of
SmolLM2-135M's shape with random weights. It checks that the fast path (fused projections,
last-position logits, growing KV cache) gives the reference path's logits on the GPU, then
measures batch-1 and batched decode in fp32 and bf16, eager and with torch.compile of the model
(CUDA graphs through mode="reduce-overhead"), and prints one Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from genlab.models.transformer import LMConfig, Transformer  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cuda")
SMOL = dict(vocab_size=49152, context=2048, n_layer=30, n_head=9, n_kv_head=3, d_model=576, ffn_hidden=1536,
            rope_theta=100000.0)


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def decode_rate(model: Transformer, batch: int, prompt: int, steps: int) -> float:
    idx = torch.randint(0, model.cfg.vocab_size, (batch, prompt), device=DEVICE)
    cache = model.new_cache(batch)
    model(idx, cache, 0, last_only=True)
    tok = idx[:, -1:]
    times = []
    for i in range(steps):
        sync()
        t = time.perf_counter()
        model(tok, cache, prompt + i, last_only=True)
        sync()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times[2:])


def main() -> None:
    torch.manual_seed(0)
    ref = Transformer(LMConfig(**SMOL)).to(DEVICE).eval()
    fast = Transformer(LMConfig(**SMOL)).to(DEVICE).eval()
    fast.load_state_dict(ref.state_dict())
    fast.fuse_for_inference()
    idx = torch.randint(0, SMOL["vocab_size"], (2, 64), device=DEVICE)
    with torch.no_grad():
        full = ref(idx)
        cache = fast.new_cache(2)
        last = fast(idx[:, :40], cache, 0, last_only=True)[:, -1]
        steps = [fast(idx[:, t : t + 1], cache, t, last_only=True)[:, -1] for t in range(40, 64)]
    diff = max((last - full[:, 39]).abs().max().item(),
               max((s - full[:, t]).abs().max().item() for t, s in zip(range(40, 64), steps, strict=True)))
    print(f"device {torch.cuda.get_device_name() if DEVICE.startswith('cuda') else DEVICE}, torch {torch.__version__}")
    print(f"fast vs reference max |logit diff| (fp32, prefill + 24 decode steps): {diff:.2e}")
    assert diff < 1e-2, diff

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = Transformer(LMConfig(**SMOL)).to(DEVICE, dtype).eval().fuse_for_inference()
        for batch in (1, 16):
            rows.append((str(dtype).split(".")[-1], "eager", batch, decode_rate(model, batch, 128, 40)))
        if os.environ.get("COMPILE", "1") == "1" and DEVICE.startswith("cuda"):
            t = time.perf_counter()
            try:  # an untried path on this code: a failure is a finding, reported in the table
                compiled = torch.compile(model, mode="reduce-overhead", dynamic=True)
                rate = decode_rate(compiled, 1, 128, 40)
                rows.append((str(dtype).split(".")[-1],
                             f"compiled (first call incl. {time.perf_counter() - t:.0f} s)", 1, rate))
            except Exception as e:  # noqa: BLE001
                rows.append((str(dtype).split(".")[-1], f"compile failed: {type(e).__name__}", 1, 0.0))
    print("\n| dtype | path | batch | decode tok/s |\n|---|---|---|---|")
    for dtype, path, batch, rate in rows:
        print(f"| {dtype} | {path} | {batch} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
