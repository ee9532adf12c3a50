"""The analysis of one model as a plain dictionary (what ``--json`` prints), and its renderings:
rich tables, Markdown, a side-by-side comparison and a memory-against-context plot.

The analysis, the sections and the comparison rows come from the model's family
(genlab.sizing.families); every rendering reads the same dictionary, so the formats cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from genlab.errors import ConfigError
from genlab.sizing import catalog, memory
from genlab.sizing.arch import Architecture, from_catalog, from_preset, preset_names
from genlab.sizing.common import GIB, Section, SizeOptions, params_str, si
from genlab.sizing.common import parse_count as parse_count  # genlab/cli/size.py imports it from here
from genlab.sizing.counts import count
from genlab.sizing.families import FAMILIES, family_of
from genlab.sizing.hardware import Device
from genlab.sizing.image import ImageArch


def analyse(a: Architecture | ImageArch, opts: SizeOptions, devices: list[Device] | None = None,
            train_device: Device | None = None) -> dict:
    """Everything ``genlab size`` reports about one model, as JSON-ready numbers (bytes, FLOPs, seconds):
    its family's analysis."""
    return family_of(a.family).analyse(a, opts, devices, train_device)


def sections(r: dict) -> list[Section]:
    """The tables of a single-model report, as its family lays them out."""
    return family_of(r["model"]["family"]).sections(r)


def compare_section(reports: list[dict]) -> Section:
    """Key figures of several models side by side: every family's comparison rows, tried on every
    model; a figure a model does not have (an LM's KV cache for a GAN) shows as '-'. A family's own
    rows all show when every model is of it; rows of other families only where some model has them."""

    def cell(fn, r: dict) -> str:
        try:
            return fn(r)
        except (KeyError, TypeError):
            return "-"

    hw = reports[0]["settings"]["hardware"]
    theirs = [family_of(r["model"]["family"]).compare_rows for r in reports]
    row_sets = []  # each distinct compare_rows once, in registry order (the GAN and VAE share theirs)
    for f in FAMILIES.values():
        if f.compare_rows not in row_sets:
            row_sets.append(f.compare_rows)
    rows = []
    for rows_of in row_sets:
        own = all(t is rows_of for t in theirs)
        for label, fn in rows_of(hw):
            cells = [cell(fn, r) for r in reports]
            if own or any(c != "-" for c in cells):
                rows.append([label, *cells])
    return Section("Comparison", ["quantity", *[r["model"]["name"] for r in reports]], rows)


def catalogue_section() -> Section:
    rows = []
    for m in catalog.MODELS:
        n = count(from_catalog(m)).total
        rows.append([m.name, m.config["model_type"], params_str(n), si(m.nominal), "yes" if m.note else ""])
    for p in preset_names():
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
