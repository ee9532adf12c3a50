"""What every family's analysis and report share: the options, number formatting, device figures and
the :class:`Section` table that all renderers read.

It sits at the bottom of the sizing layer (it imports only errors and hardware), so the LM modules and
genlab.sizing.image can both use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from genlab.errors import ConfigError
from genlab.sizing.hardware import Device

GIB = 2**30
# The --kv-dtype choices; genlab.sizing.memory.KV_BYTES gives each its bytes per element.
KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "q8_0", "q4_0")


@dataclass
class SizeOptions:
    context: int | None = None  # tokens; default: the model's own context
    batch: int = 1
    kv_dtype: str = "fp16"
    hardware: str = "h100"  # device for training time and the comparison's speed rows
    tokens: float | None = None  # training tokens D; default: Chinchilla-optimal
    mfu: float = 0.4  # model FLOPs utilisation assumed for training time
    lora_rank: int = 8  # genlab finetune's default

    def validate(self) -> None:
        if self.context is not None and self.context <= 0:
            raise ConfigError(f"--context must be positive (got {self.context})")
        if self.batch <= 0:
            raise ConfigError(f"--batch must be positive (got {self.batch})")
        if self.kv_dtype not in KV_DTYPES:
            raise ConfigError(f"unknown --kv-dtype '{self.kv_dtype}'; choose one of: {', '.join(KV_DTYPES)}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu must be in (0, 1] (got {self.mfu})")
        if self.tokens is not None and self.tokens <= 0:
            raise ConfigError(f"--tokens must be positive (got {self.tokens})")
        if self.lora_rank < 1:
            raise ConfigError(f"--lora-rank must be at least 1 (got {self.lora_rank})")


def parse_count(text: str) -> float:
    """'2e12', '1.4T', '300B', '15M' -> a number."""
    t = text.strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], 1.0)
    try:
        return float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise ConfigError(f"cannot read '{text}' as a token count (e.g. 2e12, 1.4T, 300B)") from None


def device_info(dev: Device) -> dict:
    """A device's own figures, as every report's device rows carry them."""
    return {"key": dev.key, "name": dev.name, "unit": dev.unit, "memory_gib": dev.memory_gib,
            "usable_gib": dev.usable_gib, "usable_why": dev.usable_why, "bandwidth_gbs": dev.bandwidth_gbs,
            "flops": dev.flops, "source": dev.source, "estimates": dev.estimates, "measured": dev.measured}


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
    """One table of a report: what the rich, Markdown and comparison renderers all print."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)


# A row of `genlab size A B`: its label, and the cell of one report (a KeyError there shows as "-").
CompareRow = tuple[str, Callable[[dict], str]]
