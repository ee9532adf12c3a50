"""``open_lm(path)``: the one entry point that opens any language-model artifact genlab reads.

Each runtime is one module here with ``NAME``, ``ARTIFACT`` (what it opens, in words),
``detect(path) -> bool`` (cheap: suffixes and small JSON files, no heavy imports) and
``open_artifact(path, device) -> Opened``. ``RUNTIMES`` lists them in the order they are asked;
a new runtime is a new module and one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from genlab.errors import RunError
from genlab.runtimes.base import Opened, read_bundle_meta

RUNTIMES = (
    "genlab.runtimes.pytorch",  # run directories, float and quantized
    "genlab.runtimes.onnx",  # .onnx files
    "genlab.runtimes.executorch",  # export folders
    "genlab.runtimes.litert",
    "genlab.runtimes.coreml",
    "genlab.runtimes.llamacpp",  # .gguf files
    "genlab.runtimes.hf",  # Hugging Face folders
)


def runtimes() -> list[ModuleType]:
    return [importlib.import_module(name) for name in RUNTIMES]


def find_runtime(path: str | Path) -> ModuleType:
    """The runtime module that opens ``path``, or a one-line error saying what it is."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"'{path}' does not exist")
    for module in runtimes():
        if module.detect(path):
            return module
    raise RunError(_unknown(path))


def _unknown(path: Path) -> str:
    known = "; ".join(m.ARTIFACT for m in runtimes())
    if path.is_dir() and (path / "genlab-export.json").is_file():
        fmt = read_bundle_meta(path).get("format")
        return f"'{path}' is a genlab {fmt} export, which no runtime here opens (genlab opens: {known})"
    if path.is_dir() and (path / "config.json").is_file():
        return (f"'{path}/config.json' is neither a genlab run (no 'family') nor a Hugging Face config "
                f"(no 'model_type'); genlab opens: {known}")
    what = "folder" if path.is_dir() else "file"
    return f"'{path}' is not a genlab run or any model genlab can open (a {what} without config.json); it opens {known}"


def open_lm(path: str | Path, device: str = "auto", fast: bool = True) -> Opened:
    """Open a language-model artifact with the runtime that reads it. ``fast=False`` asks a runtime
    that has a separate fast inference path (``FAST_OPTION``: PyTorch runs) for its reference path."""
    path = Path(path)
    module = find_runtime(path)
    if getattr(module, "FAST_OPTION", False):
        return module.open_artifact(path, device, fast=fast)
    return module.open_artifact(path, device)
