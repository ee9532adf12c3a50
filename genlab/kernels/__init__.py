"""genlab's own CPU kernels: weight-only int8 and int4 matrix products for few rows (qmatmul.c),
and the whole decoding step of the Transformer in one call (decode.c, driven by decode.py).

The C files are compiled on first use with the machine's C compiler for the machine's own
instruction set (``-march=native``: AVX2/FMA where the CPU has them) into
``~/.cache/genlab/kernels`` (``GENLAB_KERNEL_CACHE``), once per source, flags and compiler, and
called through ctypes. Where no compiler is found or the build fails, ``available()`` is False
and the quantized layers dequantize per call and the model runs its layers instead (slower, same
numbers): nothing else changes.
``GENLAB_KERNELS=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode.c")  # it includes qmatmul.c: one library
SOURCES = [SOURCE, Path(__file__).with_name("qmatmul.c")]
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC"]
MAX_ROWS = 16  # activation rows up to which these kernels beat dequantize + sgemm here (BENCHMARKS.md)

_lib: ctypes.CDLL | None = None
_tried = False
_P = ctypes.c_void_p
_I = ctypes.c_int


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    text = [p.read_text() for p in SOURCES]
    key = hashlib.sha256("\n".join([*text, " ".join(FLAGS), cc, *version]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GENLAB_KERNEL_CACHE", Path.home() / ".cache" / "genlab" / "kernels"))
    out = cache / f"genlab-kernels-{key}.so"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    print("genlab: compiling the int8/int4 CPU kernels once (a few seconds)...", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:  # build beside the target and rename: a concurrent or killed build never leaves half a library
        subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, a failed build, or GENLAB_KERNELS=0)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    cc = _compiler()
    if os.environ.get("GENLAB_KERNELS", "1") == "0" or cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))  # after torch: its libgomp is the one this library binds to
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"genlab: CPU kernels unavailable ({detail.strip().splitlines()[-1] if detail.strip() else e}); "
              f"quantized layers dequantize per call instead", file=sys.stderr)
        return None
    lib.gl_q8_matmul.argtypes = [_P, _I, _I, _P, _P, _I, _P, _I]
    lib.gl_q4_matmul.argtypes = [_P, _I, _I, _P, _P, _I, _I, _P, _I]
    lib.gl_kernel_isa.restype = ctypes.c_char_p
    lib.gl_decode_scratch.argtypes, lib.gl_decode_scratch.restype = [_P, _I, ctypes.c_long], ctypes.c_long
    lib.gl_decode.argtypes = [_P, _P, _I, _P, _P, _P, _I, _P, _P, _I]
    _lib = lib
    return lib


def available() -> bool:
    return library() is not None


def isa() -> str:
    lib = library()
    return lib.gl_kernel_isa().decode() if lib is not None else "none"


def usable(x: torch.Tensor, cols: int) -> bool:
    """Can these kernels take ``x`` (its rows flattened) against a weight with ``cols`` inputs?"""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and cols % 16 == 0
            and x.numel() // cols <= MAX_ROWS and available())


def q8_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(M, K) fp32 x (N, K) int8 with per-row fp32 scales -> (M, N) fp32."""
    x = x.contiguous()
    (M, K), N = x.shape, qweight.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    library().gl_q8_matmul(x.data_ptr(), M, K, qweight.data_ptr(), scale.data_ptr(), N, y.data_ptr(),
                           torch.get_num_threads())
    return y


def q4_matmul(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """(M, K) fp32 x (N, K/2) packed int4 with fp32 scales (N, K/group) -> (M, N) fp32."""
    x = x.contiguous()
    (M, K), N = x.shape, packed.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    library().gl_q4_matmul(x.data_ptr(), M, K, packed.data_ptr(), scale.data_ptr(), group, N, y.data_ptr(),
                           torch.get_num_threads())
    return y
