"""Devices a model may run on: a catalogue of public figures, and this machine measured at run time.

Units: memory in GiB (2**30 bytes; "80 GB" of HBM on an H100 is 80 GiB), bandwidth in GB/s
(10**9 bytes/s), peak throughput in dense (no 2:4 sparsity) operations per second. Each figure names
its source; figures a vendor does not publish are marked as estimates and say how they were derived.

Compute keys: "fp32", "fp16" (the 16-bit float rate, bf16 and fp16 alike on these parts) and
"int8". A device without a key cannot run that precision natively; see :func:`peak`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from genlab.errors import ConfigError

T = 1e12


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    memory_gib: float  # physical memory
    usable_gib: float  # what one model may take, after the system's share
    bandwidth_gbs: float  # peak memory bandwidth
    flops: dict[str, float]  # dense peak ops/s by compute precision
    source: str
    usable_why: str = ""
    estimates: str = ""  # which figures are not published by the vendor, and how they were derived
    measured: bool = False
    unit: str = ""  # what it is: GPU, NPU, CPU


_GPU_WHY = "memory - 1 GiB for the CUDA context and driver (assumption)"


def _nvidia(key: str, name: str, gib: float, bandwidth: float, flops: dict[str, float], source: str) -> Device:
    # Assumption: ~1 GiB goes to the driver's reserve, the CUDA context and allocator slack.
    return Device(key, name, gib, gib - 1.0, bandwidth, flops, source, _GPU_WHY, unit="GPU")


# NVIDIA H100 SXM datasheet, https://www.nvidia.com/en-us/data-center/h100/ : FP32 67 TFLOPS, BF16/FP16
# tensor 1,979 and INT8 3,958 "with sparsity" (dense is half). H200 has the same tensor cores.
_HOPPER = {"fp32": 67 * T, "fp16": 989.5 * T, "int8": 1979 * T}
# NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/ : FP32 19.5 TFLOPS, BF16/FP16 tensor
# 312, INT8 624 TOPS (dense).
_AMPERE = {"fp32": 19.5 * T, "fp16": 312 * T, "int8": 624 * T}

CATALOG: list[Device] = [
    # H100 SXM: 80 GB HBM3 at 3.35 TB/s. H200 SXM: 141 GB HBM3e at 4.8 TB/s.
    _nvidia("h100", "NVIDIA H100 SXM 80GB", 80, 3350, _HOPPER, "https://www.nvidia.com/en-us/data-center/h100/"),
    _nvidia("h200", "NVIDIA H200 SXM 141GB", 141, 4800, _HOPPER, "https://www.nvidia.com/en-us/data-center/h200/"),
    # A100 SXM: 40 GB HBM2 at 1,555 GB/s, 80 GB HBM2e at 2,039 GB/s.
    _nvidia("a100-40gb", "NVIDIA A100 SXM 40GB", 40, 1555, _AMPERE, "https://www.nvidia.com/en-us/data-center/a100/"),
    _nvidia("a100-80gb", "NVIDIA A100 SXM 80GB", 80, 2039, _AMPERE, "https://www.nvidia.com/en-us/data-center/a100/"),
    # NVIDIA Ada GPU architecture whitepaper, appendix table for GeForce RTX 4090: 24 GB GDDR6X at 1,008 GB/s;
    # FP32 82.6 TFLOPS; FP16/BF16 tensor with FP32 accumulate 165.2 (dense); INT8 tensor 660.6 TOPS (dense).
    _nvidia("rtx4090", "NVIDIA GeForce RTX 4090 24GB", 24, 1008,
            {"fp32": 82.6 * T, "fp16": 165.2 * T, "int8": 660.6 * T},
            "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"),
    # Apple M4 Max (MacBook Pro tech specs; Apple newsroom, 30 Oct 2024): up to 128 GB unified memory at
    # 546 GB/s, 40-core GPU; the M4 family's 16-core Neural Engine is rated 38 TOPS (newsroom, 7 May 2024).
    Device("m4-max-gpu", "Apple M4 Max 128GB (GPU)", 128, 96, 546,
           {"fp32": 16 * T, "fp16": 16 * T},
           "https://www.apple.com/macbook-pro/specs/",
           "macOS lets the GPU wire about 75% of unified memory by default (iogpu.wired_limit_mb raises it)",
           "GPU FLOP/s are not published by Apple: 40 cores x 128 FP32 lanes x 2 FLOP x ~1.6 GHz = ~16 TFLOPS, "
           "fp16 at the same rate", unit="GPU"),
    Device("m4-max-ane", "Apple M4 Max 128GB (Neural Engine)", 128, 96, 546,
           {"fp16": 19 * T, "int8": 38 * T},
           "https://www.apple.com/newsroom/2024/05/apple-introduces-m4-chip/",
           "shares the unified memory with the GPU (same ~75% limit)",
           "Apple's 38 TOPS are int8; fp16 taken as half of it. The Neural Engine may not reach the full "
           "unified-memory bandwidth, so its decode bound is optimistic", unit="NPU"),
    # iPhone 16 Pro, A18 Pro (16-core Neural Engine), https://www.apple.com/iphone-16-pro/specs/ : Apple
    # publishes neither RAM size nor bandwidth nor this Neural Engine's TOPS; see the estimates string.
    Device("iphone-16-pro", "iPhone 16 Pro, A18 Pro (Neural Engine)", 8, 6, 60,
           {"fp16": 17.5 * T, "int8": 35 * T},
           "https://www.apple.com/iphone-16-pro/specs/",
           "assumption: one app gets ~6 of 8 GB with the increased-memory-limit entitlement",
           "8 GB and 60 GB/s (LPDDR5X-7500, 64-bit bus) from teardown reports; 35 int8 TOPS is Apple's figure "
           "for the A17 Pro's Neural Engine, taken for the A18 Pro's; fp16 taken as half of it",
           unit="NPU"),
    # Snapdragon 8 Gen 3 (e.g. Galaxy S24 Ultra, 12 GB), Qualcomm's product page: LPDDR5X up to 4800 MHz.
    Device("snapdragon-8-gen3", "Snapdragon 8 Gen 3 phone, 12GB (Hexagon NPU)", 12, 8, 76.8,
           {"fp16": 22.5 * T, "int8": 45 * T},
           "https://www.qualcomm.com/products/mobile/snapdragon/smartphones/snapdragon-8-series-mobile-platforms/snapdragon-8-gen-3-mobile-platform",
           "assumption: Android leaves one app ~8 of 12 GB",
           "76.8 GB/s derived from LPDDR5X at 4800 MHz (9600 MT/s) on a 64-bit bus; Qualcomm publishes no "
           "phone NPU TOPS: 45 int8 TOPS is its figure for the same-generation Hexagon NPU in Snapdragon X "
           "Elite; fp16 taken as half", unit="NPU"),
    # Raspberry Pi 5 product brief, https://datasheets.raspberrypi.com/rpi5/raspberry-pi-5-product-brief.pdf :
    # Broadcom BCM2712, 4 x Cortex-A76 at 2.4 GHz, LPDDR4X-4267 (32-bit bus: 17.1 GB/s), 8 GB model.
    Device("raspberry-pi-5", "Raspberry Pi 5 8GB (CPU)", 8, 7, 17.1,
           {"fp32": 153.6e9, "fp16": 307.2e9, "int8": 614.4e9},
           "https://datasheets.raspberrypi.com/rpi5/raspberry-pi-5-product-brief.pdf",
           "assumption: the OS and desktop keep ~1 GB",
           "peaks derived from the core: 4 cores x 2.4 GHz x two 128-bit NEON pipes = 16 FP32, 32 FP16 FLOP or "
           "64 int8 dot-product ops per cycle per core; 17.1 GB/s from LPDDR4X-4267 on a 32-bit bus",
           unit="CPU"),
]

BY_KEY = {d.key: d for d in CATALOG}
THIS = "this"

# A format's matmuls run at this precision if the device has it, else the next one here.
_FALLBACK = {"int8": ("int8", "fp16", "fp32"), "fp16": ("fp16", "fp32"), "fp32": ("fp32", "fp16")}


def peak(device: Device, precision: str) -> tuple[float, str]:
    """Peak ops/s for matmuls at ``precision`` and the precision actually used (a device without
    int8 units runs int8 weights at its fp16 rate, the ANE runs fp32 models in fp16)."""
    for p in _FALLBACK[precision]:
        if p in device.flops:
            return device.flops[p], p
    return 0.0, precision


def lookup(key: str, machine: Device | None = None) -> Device:
    if key == THIS:
        if machine is None:
            raise ConfigError("'this' machine was not measured; drop --no-probe or choose another --hardware")
        return machine
    if key not in BY_KEY:
        raise ConfigError(f"unknown hardware '{key}'; choose one of: {', '.join([*BY_KEY, THIS])}")
    return BY_KEY[key]


# ---- this machine ------------------------------------------------------------------------------

def _ram_gib() -> tuple[float, float]:
    """Physical and currently available memory of this host."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = total
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return total / 2**30, available / 2**30


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device, seconds: float = 0.3, mib: int = 256) -> float:
    """Best read bandwidth (bytes/s) of summing a buffer far larger than the caches; decoding reads
    every weight once per token in the same streaming way."""
    import torch

    x = torch.ones(mib * 2**20 // 4, device=device)
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        x.sum()
        _sync(device)
        best = max(best, x.nbytes / (time.perf_counter() - t0))
        if time.perf_counter() > end:
            return best


def measure_matmul(device, dtype, seconds: float = 0.3) -> float:
    """Best matmul FLOP/s at ``dtype``, on a size the device finishes within the budget (CPUs
    without bf16 units are ~50x slower in bf16, so a fixed size could take minutes)."""
    import torch

    from genlab.bench import matmul_peak

    n = 256
    a = torch.randn(n, n, device=device, dtype=dtype)
    rate = 0.0
    for _ in range(2):  # the first call pays for thread-pool and kernel start-up
        t0 = time.perf_counter()
        a @ a
        _sync(device)
        rate = 2 * n**3 / max(time.perf_counter() - t0, 1e-9)
    while n < 2048 and 4 * 2 * (2 * n) ** 3 / rate < seconds / 4:
        n *= 2  # bigger matmuls reach nearer the peak; stop while four still fit the budget
    return matmul_peak(device, n=n, seconds=seconds, dtype=dtype)


def measure_machine(seconds: float = 1.5) -> Device:
    """This machine's accelerator (CUDA if present, else the CPU): memory, read bandwidth, and fp32
    and 16-bit matmul peaks, in about ``seconds``."""
    import torch

    from genlab.bench import machine

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    slice_s = seconds / 3
    bandwidth = measure_bandwidth(device, slice_s)
    flops = {"fp32": measure_matmul(device, torch.float32, slice_s),
             "fp16": measure_matmul(device, torch.bfloat16, slice_s)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        memory, usable, unit = total / 2**30, free / 2**30, "GPU"
        why = "free GPU memory now"
    else:
        memory, usable = _ram_gib()
        unit, why = "CPU", "memory available now (MemAvailable)"
    return Device(THIS, f"this machine ({unit}, measured)", round(memory, 1), round(usable, 1), bandwidth / 1e9,
                  flops, f"measured at run time with torch: {machine()}", why, measured=True, unit=unit)
