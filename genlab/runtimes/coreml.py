"""Core ML packages from genlab's export folders, run by Core ML itself: macOS only (Core ML has no
predictor on Linux). The functions and their inputs are described in genlab.export.coreml."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from genlab.errors import RunError
from genlab.models.transformer import LMConfig
from genlab.quiet import quiet
from genlab.runtimes.base import Opened, bundle_format, lm_bundle_meta, opened_bundle, require
from genlab.runtimes.static import StaticRunner, cache_names

NAME = "coreml"
ARTIFACT = "a Core ML export folder (genlab-export.json, model.mlpackage)"
LM_FUNCTIONS = ("prefill", "decode")


def detect(path: Path) -> bool:
    return bundle_format(path) == "coreml"


def core_names(n_layer: int) -> list[str]:
    """The cache inputs' Core ML names (k_0, v_0, k_1, ...); outputs append "_out"."""
    return [n.replace(".", "_") for n in cache_names(n_layer)]


def coremltools():
    # coremltools warns on import about scikit-learn, torch versions and the missing Linux predictor.
    with quiet("coremltools", "torchao"):
        return require("coremltools", "edge", "Core ML")


class CoreMLRunner(StaticRunner):
    """The exported LM through Core ML: the prefill and decode functions of model.mlpackage."""

    def __init__(self, path: Path, cfg: LMConfig, chunk: int) -> None:
        super().__init__(cfg, chunk)
        ct = coremltools()
        self.functions = {fn: ct.models.MLModel(str(path), function_name=fn, compute_units=ct.ComputeUnit.ALL)
                          for fn in LM_FUNCTIONS}
        self.names = core_names(cfg.n_layer)

    def run(self, which, tokens, input_pos, caches):
        feed = {"tokens": tokens.astype(np.int32), "input_pos": input_pos.astype(np.int32)}
        feed.update((n, c.astype(np.float16)) for n, c in zip(self.names, caches, strict=True))
        out = self.functions[which].predict(feed)
        return (np.asarray(out["logits"], np.float32),
                [np.asarray(out[f"{n}_out"], np.float32) for n in self.names])


def open_artifact(path: Path, device: str = "auto") -> Opened:
    meta = lm_bundle_meta(path, "Core ML")
    if sys.platform != "darwin":
        raise RunError(f"'{path}' is a Core ML export: Core ML runs only on macOS and iOS (open it there with "
                       f"genlab, or in an app); on this machine run an onnx, executorch or tflite export")
    if meta.get("stateful"):
        raise RunError(f"'{path}' keeps its KV cache as Core ML state, which genlab's runner does not drive; "
                       f"export without --stateful to generate with genlab")
    runner = CoreMLRunner(path / meta["files"]["lm"], LMConfig.from_dict(meta["model"]), int(meta["chunk"]))
    return opened_bundle(path, meta, runner, NAME)
