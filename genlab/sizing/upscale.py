"""Sizing of genlab's super-resolution family (genlab.models.upscale), from the model config alone.

Every layer is a 3x3 convolution computed at the *low* resolution (the sub-pixel output rearranges
channels into pixels at the end), so parameters are fixed and FLOPs grow with the input's pixels:
2 x 9 x C_in x C_out multiply-adds per low-res pixel and conv. Bicubic enlargement and PixelShuffle
are elementwise and left out of the FLOPs. Feature-map traffic (each conv reads its input and
writes its output once, fp32) gives the memory-bound side of the throughput bounds. Activations
saved for training are measured on the ``meta`` device (no memory, no arithmetic), as for the GAN.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from genlab.errors import ConfigError
from genlab.sizing.common import (
    CompareRow,
    Section,
    SizeOptions,
    device_info,
    flop,
    gib,
    params_str,
    rate,
    si,
)
from genlab.sizing.hardware import CATALOG, Device, peak

if TYPE_CHECKING:
    from genlab.models.upscale import UpscaleConfig

FAMILY = "upscale"
PRESETS = ("upscale-tiny", "upscale-small")
WEIGHT_FORMATS: dict[str, tuple[int, int]] = {"fp32": (32, 32), "fp16": (16, 16), "int8": (8, 16)}
# Inputs the report prices: (label, low-res width, height).
JOBS = (("28 px picture (Fashion-MNIST)", 28, 28), ("256 x 256 picture", 256, 256), ("640 x 360 video frame", 640, 360))


@dataclass(frozen=True)
class UpscaleArch:
    name: str
    family: str  # "upscale"
    config: Any  # UpscaleConfig
    source: str = ""
    run_batch: int | None = None
    patch: int | None = None  # high-res training patch side


@dataclass(frozen=True)
class Conv:
    name: str
    cin: int
    cout: int

    @property
    def params(self) -> int:
        return 9 * self.cin * self.cout + self.cout

    @property
    def flops_per_pixel(self) -> int:
        return 2 * 9 * self.cin * self.cout

    @property
    def bytes_per_pixel(self) -> int:  # fp32 read of the input map and write of the output map
        return 4 * (self.cin + self.cout)


def convs(c: UpscaleConfig) -> list[Conv]:
    w = c.width
    out = [Conv(f"head {c.channels} -> {w} ch", c.channels, w)]
    for i in range(c.blocks):
        out += [Conv(f"block {i + 1}: conv 1", w, w), Conv(f"block {i + 1}: conv 2", w, w)]
    out += [Conv("body end", w, w), Conv(f"tail {w} -> {c.channels} x {c.scale}x{c.scale} ch (PixelShuffle)", w,
                                          c.channels * c.scale**2)]
    return out


def _config(values: dict, where: str) -> UpscaleConfig:
    from genlab.models.upscale import UpscaleConfig

    unknown = set(values) - set(UpscaleConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{where}: unknown upscale setting(s): {', '.join(sorted(unknown))}")
    for name in ("scale", "channels", "width", "blocks"):
        if name in values and (not isinstance(values[name], int) or isinstance(values[name], bool)):
            raise ConfigError(f"{where}: {name} must be an integer (got {values[name]!r})")
    cfg = UpscaleConfig(**values)
    cfg.validate()
    return cfg


def read_run(cfg: dict, name: str, source: str) -> UpscaleArch:
    if not isinstance(cfg.get("model"), dict):
        raise ConfigError(f"{source}: an upscale run config needs a 'model' section")
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    batch, patch = train.get("batch_size"), cfg.get("patch")
    return UpscaleArch(name, FAMILY, _config(cfg["model"], source), source,
                       batch if isinstance(batch, int) else None, patch if isinstance(patch, int) else None)


def preset_names() -> tuple[str, ...]:
    return PRESETS


def from_preset(spec: str) -> UpscaleArch:
    """``upscale-small``: the preset at 2x, grayscale, as `genlab train upscale --preset small` builds it
    on Fashion-MNIST (24 px patches)."""
    from genlab.train.upscale import MODEL_PRESETS, TRAIN_PRESETS, default_patch

    preset = spec.split("-", 1)[1]
    cfg = _config({**MODEL_PRESETS[preset], "scale": 2, "channels": 1}, spec)
    return UpscaleArch(spec, FAMILY, cfg, f"genlab upscale preset '{preset}' at 2x, 1 channel (fashion-mnist)",
                       TRAIN_PRESETS[preset]["batch_size"], default_patch(28, 2))


@cache
def _saved_bytes_per_lr_pixel(config_json: str) -> float:
    """Bytes autograd saves for backward per low-res input pixel (fp32), measured on the meta device at
    two input sizes (saved bytes are linear in the pixels)."""
    import json

    import torch

    from genlab.models.upscale import UpscaleConfig, Upscaler

    model = Upscaler(UpscaleConfig.from_dict(json.loads(config_json))).to("meta")
    params = {p.untyped_storage()._cdata for p in model.parameters()}

    def measure(side: int) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            if s._cdata not in params:
                seen[s._cdata] = s.nbytes()
            return t

        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.rand(1, model.cfg.channels, side, side))
        return sum(seen.values())

    return (measure(16) - measure(8)) / (16 * 16 - 8 * 8)


def analyse(a: UpscaleArch, opts: SizeOptions, devices: list[Device] | None = None,
            train_device: Device | None = None) -> dict:
    import json

    opts.validate()
    devices = CATALOG if devices is None else devices
    train_device = train_device or devices[0]
    c = a.config
    layers = convs(c)
    total = sum(x.params for x in layers)
    matrix = sum(9 * x.cin * x.cout for x in layers)
    weights = {f: (matrix * m + (total - matrix) * v) / 8 for f, (m, v) in WEIGHT_FORMATS.items()}
    per_px = sum(x.flops_per_pixel for x in layers)
    traffic = sum(x.bytes_per_pixel for x in layers)
    patch = a.patch or 24
    lr_px = (patch // c.scale) ** 2
    saved = _saved_bytes_per_lr_pixel(json.dumps(c.to_dict(), sort_keys=True)) * lr_px * opts.batch
    states = {"weights": 4.0 * total, "gradients": 4.0 * total, "optimizer": 8.0 * total}
    fp32, _ = peak(train_device, "fp32")

    def job_row(dev: Device, w: int, h: int) -> dict:
        r, _ = peak(dev, "fp32")
        by_compute = r / (per_px * w * h) if r else 0.0
        by_memory = dev.bandwidth_gbs * 1e9 / (traffic * w * h)
        return {"frames_per_s": min(by_compute, by_memory) if by_compute else by_memory,
                "limit": "compute" if by_compute and by_compute < by_memory else "memory"}

    return {
        "model": {"name": a.name, "family": FAMILY, "source": a.source, **c.to_dict(), "run_batch_size": a.run_batch,
                  "patch": patch},
        "settings": {"batch": opts.batch, "hardware": train_device.key,
                     "not_applicable": ["--context", "--kv-dtype", "--tokens", "--mfu"]},
        "parameters": {"breakdown": [{"part": x.name, "params": x.params} for x in layers], "total": total},
        "memory": {"weights": weights, "checkpoint": 4.0 * total + 90.0 * 2 * len(layers),
                   "training": {**states, "activations": saved, "total": sum(states.values()) + saved}},
        "compute": {"flops_per_lr_pixel": per_px, "bytes_per_lr_pixel": traffic,
                    "jobs": [{"job": label, "width": w, "height": h, "flops": per_px * w * h} for label, w, h in JOBS],
                    "train_flops_per_patch": 3.0 * per_px * lr_px,
                    "train_patches_per_s_bound": fp32 / (3.0 * per_px * lr_px) if fp32 else 0.0,
                    "training_device": train_device.name},
        "devices": [{**device_info(d), "jobs": [job_row(d, w, h) for _, w, h in JOBS]} for d in devices],
    }


def sections(r: dict) -> list[Section]:
    m, p, mem, comp = r["model"], r["parameters"], r["memory"], r["compute"]
    params = Section("Parameters", ["part", "parameters"],
                     [[x["part"], params_str(x["params"])] for x in p["breakdown"]] + [["total", params_str(p["total"])]],
                     f"3x3 convolutions at the low resolution; {m['scale']}x, {m['channels']} channel(s), "
                     f"width {m['width']}, {m['blocks']} residual blocks")
    t, b = mem["training"], r["settings"]["batch"]
    memory = Section("Memory", ["quantity", "bytes"],
                     [*[[f"weights {f}", gib(v)] for f, v in mem["weights"].items()],
                      ["checkpoint file (fp32)", gib(mem["checkpoint"])],
                      [f"training: weights + grads + AdamW, {m['patch']} px patches", gib(t["weights"] + t["gradients"]
                                                                                         + t["optimizer"])],
                      [f"training: activations at batch {b} (--batch)", gib(t["activations"])],
                      ["training total", gib(t["total"])]],
                     "activations saved for backward measured on the meta device (fp32)")
    compute = Section("Compute", ["quantity", "value"],
                      [["FLOPs per low-res pixel", flop(comp["flops_per_lr_pixel"])],
                       *[[f"FLOPs to enlarge a {j['job']}", flop(j["flops"])] for j in comp["jobs"]],
                       ["training FLOPs per patch (fwd + 2x bwd)", flop(comp["train_flops_per_patch"])],
                       [f"training patches/s bound, {comp['training_device']} fp32",
                        rate(comp["train_patches_per_s_bound"])]],
                      "2 x multiply-adds of the convolutions; bicubic and PixelShuffle not counted")
    devices = Section("Frames per second bounds (fp32, one pass)", ["device", *[j["job"] for j in comp["jobs"]]],
                      [[d["key"], *[f"{rate(j['frames_per_s'])} ({j['limit']})" for j in d["jobs"]]]
                       for d in r["devices"]],
                      "min(peak FLOP/s / FLOPs per frame, bandwidth / feature-map bytes per frame); the weights "
                      f"({gib(mem['weights']['fp32'])}) fit on every device")
    return [params, memory, compute, devices]


def compare_rows(hw: str) -> list[CompareRow]:
    return [
        ("upscale factor", lambda r: f"{r['model']['scale']}x"),
        ("checkpoint file", lambda r: gib(r["memory"]["checkpoint"])),
        ("FLOPs per low-res pixel", lambda r: si(r["compute"]["flops_per_lr_pixel"])),
        ("training memory (batch)", lambda r: gib(r["memory"]["training"]["total"])),
    ]

