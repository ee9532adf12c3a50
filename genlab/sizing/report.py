"""The analysis of one model as a plain dictionary (what ``--json`` prints), and its renderings:
rich tables, Markdown, a side-by-side comparison and a memory-against-context plot.

Every rendering reads the same dictionary, so the formats cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genlab.errors import ConfigError
from genlab.sizing import catalog, compute, memory
from genlab.sizing.arch import Architecture
from genlab.sizing.counts import count
from genlab.sizing.hardware import CATALOG, Device, peak

if TYPE_CHECKING:
    from genlab.sizing.image import ImageArch

GIB = memory.GIB
DEVICE_FORMATS = ("fp32", "bf16", "int8", "Q4_K_M")  # columns of the fits-on-device table


@dataclass
class SizeOptions:
    context: int | None = None  # tokens; default: the model's own context
    batch: int = 1
    kv_dtype: str = "fp16"
    hardware: str = "h100"  # device for training time and the comparison's speed rows
    tokens: float | None = None  # training tokens D; default: Chinchilla-optimal
    mfu: float = 0.4  # model FLOPs utilisation assumed for training time
    lora_rank: int = 16

    def validate(self) -> None:
        if self.context is not None and self.context <= 0:
            raise ConfigError(f"--context must be positive (got {self.context})")
        if self.batch <= 0:
            raise ConfigError(f"--batch must be positive (got {self.batch})")
        if self.kv_dtype not in memory.KV_BYTES:
            raise ConfigError(f"unknown --kv-dtype '{self.kv_dtype}'; choose one of: {', '.join(memory.KV_BYTES)}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu must be in (0, 1] (got {self.mfu})")
        if self.tokens is not None and self.tokens <= 0:
            raise ConfigError(f"--tokens must be positive (got {self.tokens})")


def parse_count(text: str) -> float:
    """'2e12', '1.4T', '300B', '15M' -> a number."""
    t = text.strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], 1.0)
    try:
        return float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise ConfigError(f"cannot read '{text}' as a token count (e.g. 2e12, 1.4T, 300B)") from None


# ---- the analysis -------------------------------------------------------------------------------

def _model_info(a: Architecture) -> dict:
    info = {"name": a.name, "family": a.family, "source": a.source, "vocab_size": a.vocab_size,
            "d_model": a.d_model, "n_layer": a.n_layer, "n_head": a.n_head, "n_kv_head": a.n_kv_head,
            "head_dim": a.head_dim, "ffn_hidden": a.ffn_hidden, "context": a.context,
            "mlp": "gated" if a.gated_mlp else "plain", "norm": a.norm, "tied_embeddings": a.tie_embeddings}
    if a.moe:
        info.update(n_expert=a.n_expert, n_expert_active=a.n_expert_active)
    if a.sliding_window:
        info.update(sliding_window=a.sliding_window, n_sliding_layers=a.n_sliding_layers)
    entry = catalog.lookup(a.name) if a.source.startswith("catalogue") else None
    if entry is not None:
        info.update(nominal=entry.nominal, note=entry.note, printed=entry.printed)
    return info


def _device_row(pc, dev: Device, opts: SizeOptions, context: int, needs: dict[str, float]) -> dict:
    formats = {}
    for fmt, need in needs.items():
        dec = compute.decode_bound(pc, fmt, dev, context, opts.batch, opts.kv_dtype)
        pre = compute.prefill_bound(pc, fmt, dev, context)
        formats[fmt] = {"need_bytes": need, "fits": need <= dev.usable_gib * GIB,
                        "decode_tokens_per_s": dec.tokens_per_s, "decode_limit": dec.limit,
                        "prefill_tokens_per_s": pre.tokens_per_s,
                        "compute_precision": peak(dev, memory.FORMATS[fmt].compute)[1]}
    return {**device_info(dev), "formats": formats}


def device_info(dev: Device) -> dict:
    """A device's own figures, as every report's device rows carry them."""
    return {"key": dev.key, "name": dev.name, "unit": dev.unit, "memory_gib": dev.memory_gib,
            "usable_gib": dev.usable_gib, "usable_why": dev.usable_why, "bandwidth_gbs": dev.bandwidth_gbs,
            "flops": dev.flops, "source": dev.source, "estimates": dev.estimates, "measured": dev.measured}


def analyse(a: Architecture | ImageArch, opts: SizeOptions, devices: list[Device] | None = None,
            train_device: Device | None = None) -> dict:
    """Everything ``genlab size`` reports about one model, as JSON-ready numbers (bytes, FLOPs, seconds)."""
    from genlab.sizing.image import ImageArch, analyse_image

    if isinstance(a, ImageArch):
        return analyse_image(a, opts, devices, train_device)
    opts.validate()
    devices = CATALOG if devices is None else devices
    train_device = train_device or devices[0]
    pc = count(a)
    ctx = opts.context or a.context
    tokens = opts.tokens or compute.chinchilla_tokens(pc)
    train_flops = compute.training_flops(pc, tokens, ctx)
    inference = {f: memory.inference_bytes(pc, f, ctx, opts.batch, opts.kv_dtype) for f in memory.FORMATS}
    needs = {f: v["total"] for f, v in inference.items()}
    return {
        "model": _model_info(a),
        "settings": {"context": ctx, "batch": opts.batch, "kv_dtype": opts.kv_dtype, "hardware": train_device.key,
                     "mfu": opts.mfu, "lora_rank": opts.lora_rank},
        "parameters": {
            "breakdown": [{"part": n, "params": v} for n, v in pc.rows()],
            "total": pc.total, "embedding": pc.embedding, "non_embedding": pc.non_embedding,
            "active": pc.active, "matmul_per_token": pc.matmul_active, "tied_embeddings": a.tie_embeddings,
        },
        "memory": {
            "weights": {f: v["weights"] for f, v in inference.items()},
            "kv_cache": memory.kv_cache_bytes(a, ctx, opts.batch, opts.kv_dtype),
            "kv_per_token": memory.kv_bytes_per_position(a, opts.kv_dtype),
            "logits": inference["bf16"]["logits"],
            "inference": needs,
            "training": {
                "full_amp": memory.full_finetune(pc, ctx, opts.batch).as_dict(),
                "activations_eager_attention": memory.activation_bytes(a, ctx, opts.batch, flash=False),
                "lora": memory.lora(pc, ctx, opts.batch, opts.lora_rank).as_dict(),
                "qlora": memory.lora(pc, ctx, opts.batch, opts.lora_rank, "nf4").as_dict(),
                "lora_params": memory.lora_params(a, opts.lora_rank),
            },
        },
        "compute": {
            "forward_flops_per_token_at_context": compute.forward_flops(pc, compute.attended(a, ctx)),
            "forward_flops_per_token_mean": compute.forward_flops_mean(pc, ctx),
            "two_n": 2.0 * pc.matmul_active,
            "training_tokens": tokens, "tokens_are_chinchilla": opts.tokens is None,
            "chinchilla_tokens": compute.chinchilla_tokens(pc),
            "training_flops": train_flops, "six_nd": compute.six_nd(pc, tokens),
            "training_seconds": compute.training_seconds(train_flops, train_device, opts.mfu),
            "training_device": train_device.name,
        },
        "devices": [_device_row(pc, d, opts, ctx, needs) for d in devices],
    }


# ---- formatting -------------------------------------------------------------------------------------

def si(x: float) -> str:
    """A count with a short-scale suffix: 6.74B parameters, 135B tokens, 69.3K tokens/s."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def flop(x: float) -> str:
    return f"{x:.3g} FLOP" if x < 1e15 else f"{x:.3e} FLOP".replace("e+", "e")


def params_str(n: float) -> str:
    return f"{int(n):,} ({si(n)})" if n >= 1e3 else f"{int(n):,}"


def num(x: float) -> str:
    """Three significant digits, without an exponent below a million."""
    return f"{x:,.0f}" if 1e3 <= abs(x) < 1e6 else f"{x:.3g}"


def gib(b: float) -> str:
    return f"{num(b / GIB)} GiB" if b >= GIB / 100 else f"{num(b / 2**20)} MiB"


def duration(s: float) -> str:
    if s == float("inf"):
        return "n/a"
    h = s / 3600
    return f"{num(h)} device-hours ({num(h / 24)} days on one)" if h >= 1 else f"{num(s)} s"


def rate(x: float) -> str:
    return "n/a" if not x else si(x)


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)


def _params_section(r: dict) -> Section:
    p, m = r["parameters"], r["model"]
    rows = [[x["part"], params_str(x["params"])] for x in p["breakdown"]]
    rows += [["total", params_str(p["total"])], ["non-embedding", params_str(p["non_embedding"])]]
    if p["active"] != p["total"]:
        rows.append(["active per token", params_str(p["active"])])
    if "nominal" in m:
        rows.append(["published (nominal)", si(m["nominal"])])
    notes = [m["note"]] if m.get("note") else []
    cap = "tied: the LM head is the token embedding, counted once" if p["tied_embeddings"] else ""
    return Section("Parameters", ["part", "parameters"], rows, cap, notes)


def _memory_section(r: dict) -> Section:
    mem, s = r["memory"], r["settings"]
    rows = [[f, memory.FORMATS[f].note, gib(mem["weights"][f]), gib(mem["inference"][f])] for f in memory.FORMATS]
    cap = (f"inference = weights + KV cache {gib(mem['kv_cache'])} ({s['kv_dtype']}, {s['context']:,} tokens x "
           f"batch {s['batch']}; {gib(mem['kv_per_token'])} per token) + logits {gib(mem['logits'])}. "
           "int8/int4 quantise the blocks' linear layers and keep embeddings and head 16-bit; GGUF types "
           "quantise every matrix and keep norms in F32")
    return Section("Memory: weights and inference", ["format", "kind", "weights", "inference"], rows, cap)


def _training_section(r: dict) -> Section:
    t, s = r["memory"]["training"], r["settings"]
    rows = []
    for label, key in (("full, AdamW", "full_amp"), (f"LoRA r={s['lora_rank']}", "lora"),
                       (f"QLoRA r={s['lora_rank']}", "qlora")):
        x = t[key]
        rows.append([label, gib(x["weights"]), gib(x["gradients"]), gib(x["optimizer"]), gib(x["activations"]),
                     gib(x["total"]), gib(x["total_recompute"])])
    cap = (f"bf16 autocast, fp32 master weights; micro-batch {s['batch']} x {s['context']:,} tokens; activations "
           f"with flash attention (eager attention: {gib(t['activations_eager_attention'])}); 'recompute' = full "
           f"activation recomputation; LoRA/QLoRA (NF4 base) train {t['lora_params']:,} parameters")
    return Section("Memory: training", ["setup", "weights", "grads", "AdamW", "activ.", "total", "recompute"],
                   rows, cap)


def _compute_section(r: dict) -> Section:
    c, s = r["compute"], r["settings"]
    d = "Chinchilla-optimal" if c["tokens_are_chinchilla"] else "given"
    rows = [
        ["forward FLOPs/token, last token of the context", flop(c["forward_flops_per_token_at_context"])],
        ["  of which 2N (N = matmul weights)", flop(c["two_n"])],
        ["forward FLOPs/token, mean over the context", flop(c["forward_flops_per_token_mean"])],
        ["Chinchilla-optimal tokens (20 per parameter)", si(c["chinchilla_tokens"])],
        [f"training tokens D ({d})", si(c["training_tokens"])],
        ["training FLOPs, 6ND (N = active parameters)", flop(c["six_nd"])],
        ["training FLOPs, matmuls + attention", flop(c["training_flops"])],
        [f"training time, {c['training_device']} at {s['mfu']:.0%} MFU", duration(c["training_seconds"])],
    ]
    return Section("Compute", ["quantity", "value"], rows, f"sequence length {s['context']:,}")


def _device_cell(f: dict) -> str:
    if not f["fits"]:
        return f"needs {gib(f['need_bytes'])}"
    return f"{rate(f['decode_tokens_per_s'])} / {rate(f['prefill_tokens_per_s'])}"


def _devices_section(r: dict) -> Section:
    s = r["settings"]
    rows, notes = [], []
    for d in r["devices"]:
        rows.append([d["key"], f"{d['usable_gib']:,.1f} GiB", f"{d['bandwidth_gbs']:,.4g} GB/s",
                     *[_device_cell(d["formats"][f]) for f in DEVICE_FORMATS]])
        notes.append(f"{d['key']}: {d['name']}; usable: {d['usable_why']}"
                     + (f"; estimates: {d['estimates']}" if d["estimates"] else ""))
    cap = (f"where it fits: decode / prefill tokens/s upper bounds (decode of the token at position "
           f"{s['context']:,}, batch {s['batch']}, KV {s['kv_dtype']}: bandwidth or peak compute, whichever binds; "
           f"prefill of {s['context']:,} tokens at peak compute); else the memory it needs")
    return Section("Fits on device, and speed bounds", ["device", "usable", "bandwidth", *DEVICE_FORMATS], rows,
                   cap, notes)


def is_image(r: dict) -> bool:
    return r["model"]["family"] in ("gan", "vae")


def sections(r: dict) -> list[Section]:
    if is_image(r):
        from genlab.sizing import image

        return image.sections(r)
    return [_params_section(r), _memory_section(r), _training_section(r), _compute_section(r), _devices_section(r)]


def compare_section(reports: list[dict]) -> Section:
    """Key figures of several models side by side; a figure a model does not have (an LM's KV cache
    for a GAN, a GAN's FLOPs per image for an LM) shows as '-'."""
    from genlab.sizing.image import COMPARE_ROWS

    def cell(fn, r: dict) -> str:
        try:
            return fn(r)
        except (KeyError, TypeError):
            return "-"

    def row(label: str, fn) -> list[str]:
        return [label, *[cell(fn, r) for r in reports]]

    hw = reports[0]["settings"]["hardware"]

    def on_hw(r: dict, fmt: str) -> dict:
        return next(d for d in r["devices"] if d["key"] == hw)["formats"][fmt] if any(
            d["key"] == hw for d in r["devices"]) else {}

    def fits(r: dict, fmt: str) -> str:
        yes = [d["key"] for d in r["devices"] if d["formats"][fmt]["fits"]]
        no = [d["key"] for d in r["devices"] if not d["formats"][fmt]["fits"]]
        if not no or not yes:
            return "all" if yes else "none"
        return f"all but {', '.join(no)}" if len(no) <= len(yes) else f"only {', '.join(yes)}"

    rows = [
        row("parameters", lambda r: si(r["parameters"]["total"])),
        row("non-embedding", lambda r: si(r["parameters"]["non_embedding"])),
        row("active per token", lambda r: si(r["parameters"]["active"])),
        row("published (nominal)", lambda r: si(r["model"]["nominal"]) if "nominal" in r["model"] else "-"),
        row("layers x width", lambda r: f"{r['model']['n_layer']} x {r['model']['d_model']}"),
        row("heads / kv heads", lambda r: f"{r['model']['n_head']} / {r['model']['n_kv_head']}"),
        row("context", lambda r: f"{r['settings']['context']:,}"),
        *[row(f"weights {f}", lambda r, f=f: gib(r["memory"]["weights"][f])) for f in ("bf16", "int8", "Q4_K_M")],
        row("KV cache", lambda r: gib(r["memory"]["kv_cache"])),
        row("inference bf16", lambda r: gib(r["memory"]["inference"]["bf16"])),
        row("training, full (AdamW)", lambda r: gib(r["memory"]["training"]["full_amp"]["total"])),
        row("training, LoRA", lambda r: gib(r["memory"]["training"]["lora"]["total"])),
        row("FLOPs/token (forward)", lambda r: flop(r["compute"]["forward_flops_per_token_at_context"])),
        row("Chinchilla tokens", lambda r: si(r["compute"]["chinchilla_tokens"])),
        row("training FLOPs", lambda r: flop(r["compute"]["training_flops"])),
        row(f"training time ({hw})", lambda r: duration(r["compute"]["training_seconds"])),
        row(f"decode tok/s bf16 ({hw})", lambda r: rate(on_hw(r, "bf16").get("decode_tokens_per_s", 0))),
        row(f"prefill tok/s bf16 ({hw})", lambda r: rate(on_hw(r, "bf16").get("prefill_tokens_per_s", 0))),
        row("fits in bf16 on", lambda r: fits(r, "bf16")),
        row("fits in Q4_K_M on", lambda r: fits(r, "Q4_K_M")),
    ]
    if any(is_image(r) for r in reports):  # with a GAN/VAE: its own rows; none that no model has
        rows += [row(label, fn) for label, fn in COMPARE_ROWS]
        rows = [x for x in rows if any(c != "-" for c in x[1:])]
    return Section("Comparison", ["quantity", *[r["model"]["name"] for r in reports]], rows)


def catalogue_section() -> Section:
    from genlab.config import LM_PRESETS
    from genlab.sizing.arch import from_catalog, from_preset

    rows = []
    for m in catalog.MODELS:
        n = count(from_catalog(m)).total
        rows.append([m.name, m.config["model_type"], params_str(n), si(m.nominal), "yes" if m.note else ""])
    for p in LM_PRESETS:
        rows.append([p, "genlab lm preset", params_str(count(from_preset(p)).total), "-", ""])
    return Section("Catalogue", ["name", "family", "parameters (computed)", "published", "note"], rows,
                   "notes: `genlab size NAME` shows them; sources are in genlab/sizing/catalog.py")


# ---- renderers -----------------------------------------------------------------------------------------

def to_markdown(secs: list[Section], title: str = "") -> str:
    out = [f"## {title}", ""] if title else []
    for s in secs:
        out += [f"### {s.title}", "", "| " + " | ".join(s.headers) + " |", "|" + "---|" * len(s.headers)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.rows]
        out += [""] + ([f"_{s.caption}_", ""] if s.caption else []) + [f"- {n}" for n in s.notes]
        out += [""] if s.notes else []
    return "\n".join(out)


def to_rich(secs: list[Section], title: str = ""):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = [Text(title, style="bold")] if title else []
    for s in secs:
        t = Table(title=s.title, caption=s.caption or None, caption_justify="left", title_justify="left")
        for i, h in enumerate(s.headers):
            t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for row in s.rows:
            t.add_row(*row)
        parts.append(t)
        parts += [Text("note: " + n, style="dim") for n in s.notes]
    return Group(*parts)


def title_of(r: dict) -> str:
    m = r["model"]
    return f"{m['name']} ({m['family']}): {m['source']}"


# ---- plot ----------------------------------------------------------------------------------------------

PLOT_FORMATS = ("fp32", "bf16", "int8", "Q4_K_M")


def plot_memory(archs: list[Architecture], opts: SizeOptions, devices: list[Device], path: Path) -> Path:
    """Inference memory (weights + KV cache + logits) against context length, one line per format,
    one panel per model, with the devices' usable memory drawn across."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(1, len(archs), figsize=(7 * len(archs), 5), squeeze=False)
    for ax, a in zip(axes[0], archs, strict=True):
        pc = count(a)
        top = opts.context or a.context
        lengths = sorted({2**k for k in range(5, top.bit_length()) if 2**k < top} | {top})
        for fmt in PLOT_FORMATS:
            ys = [memory.inference_bytes(pc, fmt, n, opts.batch, opts.kv_dtype)["total"] / GIB for n in lengths]
            ax.plot(lengths, ys, marker="o", markersize=3, label=f"{fmt} weights + {opts.kv_dtype} KV")
        by_size: dict[float, list[str]] = {}
        for d in devices:  # one line per capacity, naming every device that has it
            by_size.setdefault(round(d.usable_gib, 1), []).append(d.key)
        for gib_, keys in by_size.items():
            ax.axhline(gib_, linestyle=":", linewidth=0.8, color="grey")
            ax.annotate(", ".join(keys), (lengths[0], gib_), fontsize=7, color="grey", va="bottom")
        if a.context in lengths:
            ax.axvline(a.context, linestyle="--", linewidth=0.8, color="black", alpha=0.5)
        ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="memory (GiB)",
               title=f"{a.name}, batch {opts.batch}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
