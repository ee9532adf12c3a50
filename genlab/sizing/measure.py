"""``genlab size RUN --measure``: predicted against measured, for genlab's own LM on this machine.

Runs a short decode burst with the KV cache, a prefill, and a few training steps (AdamW), all in
fp32 (how genlab runs on CPUs), and sets each measurement beside what the sizing formulas predict
from the machine's measured bandwidth and matmul peak. Memory is measured from the tensors
themselves (parameters, gradients, optimizer states, KV cache, and the activations autograd saves,
caught with saved-tensor hooks) and, as a whole, from the process's peak memory.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.errors import GenlabError
from genlab.sizing import compute, memory
from genlab.sizing.arch import Architecture
from genlab.sizing.counts import count
from genlab.sizing.hardware import Device


@dataclass(frozen=True)
class Check:
    quantity: str
    predicted: float
    measured: float
    unit: str  # "bytes" or "tokens/s"
    how: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted else float("nan")

    def as_dict(self) -> dict:
        return {"quantity": self.quantity, "predicted": self.predicted, "measured": self.measured,
                "unit": self.unit, "ratio": self.ratio, "how": self.how}


def _lm_config(a: Architecture):
    from genlab.models.transformer import LMConfig

    if a.family != "lm":
        raise GenlabError(f"--measure runs genlab's own language models; '{a.name}' is a {a.family} architecture "
                          "(give a genlab run or a preset: tiny, small, base)")
    return LMConfig(vocab_size=a.vocab_size, context=a.context, n_layer=a.n_layer, n_head=a.n_head,
                    n_kv_head=a.n_kv_head, d_model=a.d_model, ffn_hidden=a.ffn_hidden,
                    tie_embeddings=a.tie_embeddings, dropout=a.dropout)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nbytes(tensors) -> int:
    """Bytes of distinct storages (a tied weight, or views of one buffer, count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class _SavedActivations:
    """Bytes of the tensors autograd saves for backward, parameters excluded."""

    def __init__(self, params) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self.skip:
            self.storages[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


# ---- process peak memory ---------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Hand the heap's free memory back to the OS (glibc's malloc_trim). Without this, a process that freed
    memory earlier serves the measured step from it and its RSS, so its peak, does not grow at all."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the peak may then read low


def _reset_peak(device: torch.device) -> int | None:
    """Start a fresh peak; returns the baseline in bytes (None where it cannot be measured)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    _trim_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return rss * 1024 if rss is not None else None


def _peak_since(device: torch.device, baseline: int | None) -> float | None:
    if baseline is None:
        return None
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device) - baseline)
    hwm = _status_kib("VmHWM")
    return float(hwm * 1024 - baseline) if hwm is not None else None


# ---- the bursts ----------------------------------------------------------------------------------------

def _timed(device: torch.device, fn, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inference_checks(model, a: Architecture, machine: Device, batch: int, decode_tokens: int) -> list[Check]:
    device = model.embed.weight.device
    pc = count(a)
    prompt = max(1, min(a.context // 2, a.context - decode_tokens))
    idx = torch.randint(0, a.vocab_size, (batch, prompt), device=device)
    cache = model.new_cache(batch)
    cache.reserve(a.context)  # a full context's worth: what the prediction is for
    checks = [
        Check("weights (fp32)", memory.weight_bytes(pc, "fp32"), _nbytes(model.parameters()), "bytes", "parameters"),
        Check(f"KV cache ({batch} x {a.context}, fp32)", memory.kv_cache_bytes(a, a.context, batch, "fp32"),
              _nbytes(cache.k + cache.v), "bytes", "new_cache().reserve(context)"),
    ]
    with torch.inference_mode():
        t_prefill = _timed(device, lambda: model(idx, cache, 0), 3)
        token = idx[:, -1:]

        def decode() -> None:
            for i in range(decode_tokens):
                model(token, cache, prompt + i)

        t_decode = _timed(device, decode, 3)
    mid = prompt + decode_tokens // 2
    dec = compute.decode_bound(pc, "fp32", machine, mid, batch, "fp32")
    pre = compute.prefill_bound(pc, "fp32", machine, prompt)
    checks += [
        Check(f"decode (batch {batch}, at ~{mid})", dec.tokens_per_s, batch * decode_tokens / t_decode, "tok/s",
              f"timed; {dec.limit} roof"),
        Check(f"prefill ({batch} x {prompt})", pre.tokens_per_s, batch * prompt / t_prefill, "tok/s",
              "timed; compute roof"),
    ]
    return checks


def _training_checks(model, a: Architecture, machine: Device, batch: int, steps: int) -> list[Check]:
    device = model.embed.weight.device
    pc = count(a)
    seq = a.context
    x = torch.randint(0, a.vocab_size, (batch, seq), device=device)
    y = torch.randint(0, a.vocab_size, (batch, seq), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=device.type != "mps")
    saved = _SavedActivations(model.parameters())
    model.train()

    def step(hooks: bool = False) -> None:
        opt.zero_grad(set_to_none=True)
        if hooks:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                logits = model(x)
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        else:
            logits = model(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        del logits
        loss.backward()
        opt.step()

    baseline = _reset_peak(device)
    step(hooks=True)  # also creates the AdamW moments
    grads = _nbytes(p.grad for p in model.parameters() if p.grad is not None)
    states = _nbytes(s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    t_step = _timed(device, step, steps)
    peak = _peak_since(device, baseline)
    pred = memory.full_finetune(pc, seq, batch, precision="fp32")
    train_rate = compute.training_seconds(compute.training_flops(pc, batch * seq, seq), machine, 1.0, "fp32")
    checks = [
        Check("gradients (fp32)", pred.gradients, grads, "bytes", ".grad"),
        Check("AdamW moments (fp32)", pred.optimizer, states, "bytes", "optimizer.state"),
        Check(f"activations ({batch} x {seq})", pred.activations, saved.total, "bytes", "saved-tensor hooks"),
        Check(f"training ({batch} x {seq})", batch * seq / train_rate, batch * seq / t_step, "tok/s",
              "timed; compute roof"),
    ]
    if peak is not None:
        # The model's weights exist before the baseline, so the peak above it is the rest of the state.
        checks.append(Check("training peak less weights", pred.total - pred.weights, peak, "bytes",
                            "CUDA peak allocated" if device.type == "cuda" else "peak RSS (VmHWM)"))
    return checks


def measure(a: Architecture, machine: Device, batch: int = 1, decode_tokens: int = 32, train_steps: int = 2,
            seed: int = 0) -> list[Check]:
    """Predicted against measured for genlab's LM ``a`` on this machine (``machine`` as measured by
    :func:`genlab.sizing.hardware.measure_machine`)."""
    from genlab.models.transformer import Transformer

    cfg = _lm_config(a)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Transformer(cfg).to(device).eval()
    checks = _inference_checks(model, a, machine, batch, min(decode_tokens, max(1, a.context // 2)))
    checks += _training_checks(model, a, machine, batch, train_steps)
    return checks
