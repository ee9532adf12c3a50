"""Speed benchmarks. Every figure is measured here, side by side in one run, and appended to
BENCHMARKS.md with the command, the machine and the date; tests never time anything.

- train-lm: tokens/s of the real trainer on the fortunes corpus, and model FLOPs utilisation (MFU)
  against the matmul peak measured in the same run.
- generate: decode tokens/s of the real generation path with and without the KV cache.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from genlab.config import DataConfig, TrainConfig, lm_config
from genlab.models.transformer import LMConfig

console = Console(stderr=True)

# nanoGPT's published CPU config (README, "I only have a macbook"): 4 layers, 4 heads, 128 wide,
# context 64, batch 12, character tokenizer, no dropout.
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_kv_head=4, d_model=128, context=64, dropout=0.0)
BENCH_CONFIGS = {
    "tiny": ("tiny", {}, "bpe", 16),
    "small": ("small", {}, "bpe", 16),
    "nanogpt-cpu": ("tiny", NANOGPT_CPU, "char", 12),
    "base": ("base", {}, "bpe", 4),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def matmul_peak(device: torch.device | str = "cpu", n: int = 1024, seconds: float = 1.5,
                dtype: torch.dtype = torch.float32) -> float:
    """Best sustained FLOP/s of an n x n matmul on ``device`` (the roof MFU is measured against)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def train_flops_per_token(cfg: LMConfig, n_params: int) -> float:
    """6 FLOPs per parameter per token (forward + backward), plus attention scores and values,
    12 * layers * width * context (PaLM's appendix B accounting, as nanoGPT's estimate_mfu)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.d_model * cfg.context


def append_section(path: Path | None, title: str, command: str, table_md: str, notes: str = "") -> None:
    if path is None:
        return
    stamp = dt.date.today().isoformat()
    block = (f"\n### {title}\n\n`{command}` on {machine()}, {stamp}.\n\n{table_md}\n"
             + (f"\n{notes}\n" if notes else ""))
    with open(path, "a") as f:
        f.write(block)
    console.print(f"appended to {path}")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def show_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title)
    for h in headers:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def bench_train_lm(names: list[str], steps: int = 10, write: Path | None = None, warmup: int = 3) -> list[dict]:
    from genlab.data.prepare import prepare
    from genlab.train.lm import LMTask, build_model
    from genlab.train.trainer import train

    unknown = [n for n in names if n not in BENCH_CONFIGS]
    if unknown:
        from genlab.errors import ConfigError

        raise ConfigError(f"unknown bench config(s) {unknown}; choose from {', '.join(BENCH_CONFIGS)}")
    peak = matmul_peak("cuda" if torch.cuda.is_available() else "cpu")
    console.print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s (fp32)")
    results = []
    for name in names:
        preset, overrides, tok_kind, batch = BENCH_CONFIGS[name]
        base = lm_config(preset, **overrides)
        data = prepare(DataConfig(corpus=["fortunes"], tokenizer=tok_kind, vocab_size=base.vocab_size),
                       log=lambda m: None)
        cfg = lm_config(preset, **{**overrides, "vocab_size": data.meta["vocab_size"]})
        model = build_model(cfg, 0)
        n_params = model.num_params()
        tcfg = TrainConfig(steps=warmup + steps, batch_size=batch, lr=1e-3, warmup_steps=1,
                           eval_every=10**9, checkpoint_every=10**9, log_every=10**9, eval_batches=1)
        with tempfile.TemporaryDirectory() as tmp:
            res = train(LMTask(model, data, batch, eval_batches=1, sample_tokens=1), tcfg, Path(tmp), quiet=True)
        timed = res.step_seconds[warmup:]
        sec = statistics.median(timed)
        tokens = batch * cfg.context
        tok_s = tokens / sec
        mfu = tok_s * train_flops_per_token(cfg, n_params) / peak
        results.append(dict(config=name, params=n_params, batch=batch, context=cfg.context, tokens_per_s=tok_s,
                            mfu=mfu, step_ms=sec * 1e3))
    headers = ["config", "params", "batch x context", "step (ms)", "tokens/s", "MFU vs measured peak"]
    rows = [[r["config"], f"{r['params']:,}", f"{r['batch']} x {r['context']}", f"{r['step_ms']:.1f}",
             f"{r['tokens_per_s']:,.0f}", f"{r['mfu']:.1%}"] for r in results]
    show_table("train-lm", headers, rows)
    append_section(write, "Training throughput (`bench train-lm`)", "genlab bench train-lm " + " ".join(sys.argv[3:]),
            markdown_table(headers, rows),
            f"Peak: best fp32 1024x1024 matmul measured in the same run, {peak / 1e9:.1f} GFLOP/s. "
            f"Median of {steps} optimizer steps after {warmup} warm-up steps, real trainer (AdamW, "
            "clipping), fortunes corpus. FLOPs/token = 6N + 12·layers·width·context.")
    return results


def bench_generate(lengths: list[int], preset: str = "small", write: Path | None = None,
                   prompt_tokens: int = 16) -> list[dict]:
    from genlab.data import tokenizer as tokmod
    from genlab.generate.text import LanguageModel
    from genlab.train.lm import build_model

    longest = max(lengths) + prompt_tokens + 1
    base = lm_config(preset)
    # Byte-level BPE on a slice of this Python's own sources, then a model whose context holds the
    # longest generation, so the no-cache path keeps growing instead of sliding.
    from genlab.data.corpus import stdlib_files

    text = "".join(p.read_text(errors="ignore") for p in stdlib_files()[:40])
    tok = tokmod.train_bpe([text], base.vocab_size)
    cfg = lm_config(preset, vocab_size=tok.get_vocab_size(), context=max(base.context, longest))
    lm = LanguageModel(build_model(cfg, 0), tok)
    prompt = tok.decode(list(range(300, 300 + prompt_tokens)))
    results = []
    for n in lengths:
        row = {"new_tokens": n}
        for use_cache in (True, False):
            lm.generate(prompt, max_tokens=4, temperature=0, ignore_eot=True, use_cache=use_cache)  # warm-up
            t0 = time.perf_counter()
            lm.generate(prompt, max_tokens=n, temperature=0, ignore_eot=True, use_cache=use_cache)
            row["cache" if use_cache else "no_cache"] = n / (time.perf_counter() - t0)
        row["speedup"] = row["cache"] / row["no_cache"]
        results.append(row)
    headers = ["new tokens", "with KV cache (tok/s)", "without (tok/s)", "speed-up"]
    rows = [[str(r["new_tokens"]), f"{r['cache']:,.1f}", f"{r['no_cache']:,.1f}", f"{r['speedup']:.2f}x"]
            for r in results]
    show_table("generate", headers, rows)
    append_section(write, f"Decode speed, KV cache on/off (`bench generate`, {preset} preset)",
            "genlab bench generate " + " ".join(sys.argv[3:]), markdown_table(headers, rows),
            f"{cfg.n_layer} layers x {cfg.d_model} wide, vocab {cfg.vocab_size}, context {cfg.context}, "
            f"{prompt_tokens}-token prompt, greedy, batch 1, the real `generate` path (tokenizer decode and "
            "stop checks included).")
    return results


def dcgan_reference_loop(data, width: int, latent_dim: int, batch_size: int, steps: int, warmup: int) -> float:
    """Seconds per step of a training loop in the shape of pytorch/examples' ``dcgan/main.py``, re-created
    here (nothing is fetched) for the same images, widths and batch size as genlab's preset:

    a Dataset that converts and normalises one image per item, a shuffling DataLoader that collates batches
    (``num_workers=0``: worker processes would share the same two cores), DCGAN networks (transposed
    convolutions, batch norm, ReLU / LeakyReLU, sigmoid), BCE loss, D updated on a real and a detached fake
    batch, then G on the same fake batch, Adam (lr 2e-4, betas 0.5/0.999), NCHW and fp32."""
    from torch import nn

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.train)

        def __getitem__(self, i: int):
            x = torch.from_numpy(data.train.images[i]).float().div(255)
            return (x - 0.5) / 0.5, int(data.train.labels[i])

    from genlab.models.conv import size_plan, widths

    base, doublings = size_plan(data.config.image_size)
    ch = widths(width, doublings)
    channels = data.config.channels
    g_layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, ch[0], base, 1, 0, bias=False),
                                 nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
    for i in range(doublings - 1):
        g_layers += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i + 1]),
                     nn.ReLU(True)]
    g_layers += [nn.ConvTranspose2d(ch[doublings - 1], channels, 4, 2, 1, bias=False), nn.Tanh()]
    d_layers: list[nn.Module] = [nn.Conv2d(channels, ch[doublings - 1], 4, 2, 1, bias=False),
                                 nn.LeakyReLU(0.2, True)]
    for i in reversed(range(doublings - 1)):
        d_layers += [nn.Conv2d(ch[i + 1], ch[i], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i]),
                     nn.LeakyReLU(0.2, True)]
    d_layers += [nn.Conv2d(ch[0], 1, base, 1, 0, bias=False), nn.Sigmoid()]
    net_g, net_d = nn.Sequential(*g_layers), nn.Sequential(*d_layers)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, drop_last=True)
    times: list[float] = []
    t = time.perf_counter()
    while len(times) < warmup + steps:
        for real, _ in loader:
            net_d.zero_grad()
            out = net_d(real).view(-1)
            err_real = criterion(out, torch.ones_like(out))
            err_real.backward()
            fake = net_g(torch.randn(batch_size, latent_dim, 1, 1))
            out = net_d(fake.detach()).view(-1)
            err_fake = criterion(out, torch.zeros_like(out))
            err_fake.backward()
            opt_d.step()
            net_g.zero_grad()
            out = net_d(fake).view(-1)
            criterion(out, torch.ones_like(out)).backward()
            opt_g.step()
            now = time.perf_counter()
            times.append(now - t)
            t = now
            if len(times) == warmup + steps:
                break
    return statistics.median(times[warmup:])


def bench_train_image(family: str, presets: list[str], steps: int = 20, write: Path | None = None,
                      warmup: int = 3, data_source: str = "fashion-mnist") -> list[dict]:
    """Training images/s of the GAN or VAE through the real trainer, in NCHW and in channels-last layout, and
    the wall time of the whole run (model build, training, the final evaluation and sample grid); for the GAN
    also a loop in the shape of pytorch/examples' DCGAN on the same data, widths and batch size."""
    from genlab.data.images import ImageDataConfig, load_image_data
    from genlab.train import image as img
    from genlab.train.trainer import train

    for preset in presets:
        img.check_preset(family, preset)
    data = load_image_data(ImageDataConfig(data_source, image_size=28 if data_source == "fashion-mnist" else 32))
    results = []
    for preset in presets:
        tcfg = img.image_train_config(family, preset, steps=warmup + steps, eval_every=10**9,
                                      checkpoint_every=10**9, log_every=10**9)
        per_step = tcfg.batch_size * (img.MODEL_PRESETS[family][preset].get("d_steps", 1))
        base = None
        if family == "gan":
            shape = img.MODEL_PRESETS["gan"][preset]
            t0 = time.perf_counter()
            sec = dcgan_reference_loop(data, shape["g_width"], shape["latent_dim"], tcfg.batch_size, steps, warmup)
            base = sec
            results.append(dict(preset=preset, loop="pytorch/examples DCGAN shape (NCHW)", params=None,
                                batch=tcfg.batch_size, step_ms=sec * 1e3, images_per_s=tcfg.batch_size / sec,
                                wall_s=time.perf_counter() - t0, ratio=1.0))
        for channels_last in (False, True):
            t0 = time.perf_counter()
            model_cfg = img.model_config(family, preset, data)
            model = img.build_model(family, model_cfg, 0)
            n_params = sum(p.numel() for p in model.parameters())
            with tempfile.TemporaryDirectory() as tmp:
                task = img.task_class(family, model_cfg)(model, data, tcfg.batch_size, eval_batches=1, channels_last=channels_last)
                res = train(task, tcfg, Path(tmp), quiet=True)
            sec = statistics.median(res.step_seconds[warmup:])
            base = base or sec
            results.append(dict(preset=preset, loop=f"genlab trainer ({'channels-last' if channels_last else 'NCHW'})",
                                params=n_params, batch=tcfg.batch_size, step_ms=sec * 1e3,
                                images_per_s=per_step / sec, wall_s=time.perf_counter() - t0, ratio=base / sec))
    headers = ["preset", "loop", "params", "batch", "step (ms)", "images/s", "x first row",
               f"wall time, {warmup}+{steps} steps (s)"]
    rows = [[r["preset"], r["loop"], "-" if r["params"] is None else f"{r['params']:,}", str(r["batch"]),
             f"{r['step_ms']:.1f}", f"{r['images_per_s']:,.0f}", f"{r['ratio']:.2f}", f"{r['wall_s']:.1f}"]
            for r in results]
    show_table(f"train-{family}", headers, rows)
    reference = (" The DCGAN row re-creates the shape of pytorch/examples' dcgan/main.py loop here (nothing is "
                 "fetched): per-image Dataset transform, a shuffling DataLoader (num_workers=0), DCGAN networks "
                 "of the preset's widths with batch norm in D, BCE loss, G's update on the same fake batch as "
                 "D's, NCHW fp32. Its networks are not genlab's (no spectral norm, projection or EMA)."
                 if family == "gan" else "")
    append_section(write, f"{family.upper()} training throughput (`bench train-{family}`, {data.name})",
            f"genlab bench train-{family} " + " ".join(sys.argv[3:]), markdown_table(headers, rows),
            f"Median of {steps} optimizer steps after {warmup} warm-up steps, real trainer and task "
            f"({data.name}, {data.config.image_size}px), per preset in NCHW and channels-last layout. Wall time: "
            "building the model, all steps, the final evaluation and sample grid." + reference)
    return results
