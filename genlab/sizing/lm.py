"""The Transformer LM family's analysis (what ``--json`` prints) and its report sections and
comparison rows. genlab.sizing.families registers them; genlab.sizing.report dispatches to them.
"""

from __future__ import annotations

from genlab.sizing import catalog, compute, memory
from genlab.sizing.arch import Architecture
from genlab.sizing.common import (
    GIB,
    CompareRow,
    Section,
    SizeOptions,
    device_info,
    duration,
    flop,
    gib,
    params_str,
    rate,
    si,
)
from genlab.sizing.counts import count
from genlab.sizing.hardware import CATALOG, Device, peak

DEVICE_FORMATS = ("fp32", "bf16", "int8", "Q4_K_M")  # columns of the fits-on-device table


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


def analyse(a: Architecture, opts: SizeOptions, devices: list[Device] | None = None,
            train_device: Device | None = None) -> dict:
    """Everything ``genlab size`` reports about a Transformer LM, as JSON-ready numbers (bytes, FLOPs, seconds)."""
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
                # what `genlab finetune` itself holds on a CPU (fp32), held against measured peaks in BENCHMARKS.md
                "genlab_fp32": {m: memory.genlab_finetune(pc, ctx, opts.batch, m, opts.lora_rank).as_dict()
                                for m in ("full", "lora", "qlora")},
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


# ---- report sections ------------------------------------------------------------------------------

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
    for label, key in (("genlab full, fp32", "full"), (f"genlab LoRA r={s['lora_rank']}, fp32", "lora"),
                       (f"genlab QLoRA int4 r={s['lora_rank']}", "qlora")):
        x = t["genlab_fp32"][key]
        rows.append([label, gib(x["weights"]), gib(x["gradients"]), gib(x["optimizer"]), gib(x["activations"]),
                     gib(x["total"]), gib(x["total_recompute"])])
    cap = (f"bf16 autocast, fp32 master weights; micro-batch {s['batch']} x {s['context']:,} tokens; activations "
           f"with flash attention (eager attention: {gib(t['activations_eager_attention'])}); 'recompute' = full "
           f"activation recomputation; LoRA/QLoRA (NF4 base) train {t['lora_params']:,} parameters. 'genlab' rows: "
           f"`genlab finetune` on a CPU (fp32 throughout; QLoRA over genlab's int4 g32 layers)")
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


def sections(r: dict) -> list[Section]:
    return [_params_section(r), _memory_section(r), _training_section(r), _compute_section(r), _devices_section(r)]


def compare_rows(hw: str) -> list[CompareRow]:
    """Rows of `genlab size A B`: (label, report -> cell); ``hw`` is the device of the speed rows."""

    def on_hw(r: dict, fmt: str) -> dict:
        return next(d for d in r["devices"] if d["key"] == hw)["formats"][fmt] if any(
            d["key"] == hw for d in r["devices"]) else {}

    def fits(r: dict, fmt: str) -> str:
        yes = [d["key"] for d in r["devices"] if d["formats"][fmt]["fits"]]
        no = [d["key"] for d in r["devices"] if not d["formats"][fmt]["fits"]]
        if not no or not yes:
            return "all" if yes else "none"
        return f"all but {', '.join(no)}" if len(no) <= len(yes) else f"only {', '.join(yes)}"

    return [
        ("parameters", lambda r: si(r["parameters"]["total"])),
        ("non-embedding", lambda r: si(r["parameters"]["non_embedding"])),
        ("active per token", lambda r: si(r["parameters"]["active"])),
        ("published (nominal)", lambda r: si(r["model"]["nominal"]) if "nominal" in r["model"] else "-"),
        ("layers x width", lambda r: f"{r['model']['n_layer']} x {r['model']['d_model']}"),
        ("heads / kv heads", lambda r: f"{r['model']['n_head']} / {r['model']['n_kv_head']}"),
        ("context", lambda r: f"{r['settings']['context']:,}"),
        *[(f"weights {f}", lambda r, f=f: gib(r["memory"]["weights"][f])) for f in ("bf16", "int8", "Q4_K_M")],
        ("KV cache", lambda r: gib(r["memory"]["kv_cache"])),
        ("inference bf16", lambda r: gib(r["memory"]["inference"]["bf16"])),
        ("training, full (AdamW)", lambda r: gib(r["memory"]["training"]["full_amp"]["total"])),
        ("training, LoRA", lambda r: gib(r["memory"]["training"]["lora"]["total"])),
        ("FLOPs/token (forward)", lambda r: flop(r["compute"]["forward_flops_per_token_at_context"])),
        ("Chinchilla tokens", lambda r: si(r["compute"]["chinchilla_tokens"])),
        ("training FLOPs", lambda r: flop(r["compute"]["training_flops"])),
        (f"training time ({hw})", lambda r: duration(r["compute"]["training_seconds"])),
        (f"decode tok/s bf16 ({hw})", lambda r: rate(on_hw(r, "bf16").get("decode_tokens_per_s", 0))),
        (f"prefill tok/s bf16 ({hw})", lambda r: rate(on_hw(r, "bf16").get("prefill_tokens_per_s", 0))),
        ("fits in bf16 on", lambda r: fits(r, "bf16")),
        ("fits in Q4_K_M on", lambda r: fits(r, "Q4_K_M")),
    ]
