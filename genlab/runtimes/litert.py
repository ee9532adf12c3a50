"""LiteRT (TensorFlow Lite) flatbuffers from genlab's export folders, run by ai-edge-litert's
interpreter. The signatures and their named inputs are described in genlab.export.tflite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab.errors import RunError
from genlab.models.transformer import LMConfig
from genlab.quiet import quiet
from genlab.runtimes.base import Opened, bundle_format, lm_bundle_meta, opened_bundle, require
from genlab.runtimes.static import StaticRunner, cache_names

NAME = "litert"
ARTIFACT = "a LiteRT export folder (genlab-export.json, model.tflite)"
LM_SIGNATURES = ("prefill", "decode")
IMAGE_SIGNATURE = "generator"


def detect(path: Path) -> bool:
    return bundle_format(path) == "tflite"


def io_names(n_layer: int) -> list[str]:
    """The signatures' cache names: k_0, v_0, k_1, v_1, ... (static.py's k.0, v.0, ... with '_')."""
    return [name.replace(".", "_") for name in cache_names(n_layer)]


def interpreter(path: Path):
    """ai-edge-litert's interpreter for ``path``, on as many threads as PyTorch uses."""
    module = require("ai_edge_litert.interpreter", "tflite", "running a LiteRT model")
    if not Path(path).is_file():
        raise RunError(f"'{path}' does not exist")
    with quiet(fds=True):  # "INFO: Created TensorFlow Lite XNNPACK delegate" and similar, from C++
        interp = module.Interpreter(model_path=str(path), num_threads=torch.get_num_threads())
        interp.allocate_tensors()
    return interp


class Signature:
    """One signature of a flatbuffer, called with numpy arrays by name; each input is converted to
    the dtype the signature declares (int64 token ids become int32)."""

    def __init__(self, interp, name: str) -> None:
        self.runner = interp.get_signature_runner(name)
        self.dtypes = {k: d["dtype"] for k, d in self.runner.get_input_details().items()}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.dtypes) - set(inputs)
        if missing:
            raise RunError(f"LiteRT signature expects inputs {sorted(self.dtypes)}; missing {sorted(missing)}")
        return self.runner(**{k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in inputs.items()})


class LiteRTRunner(StaticRunner):
    """The exported LM: the "prefill" and "decode" signatures of one flatbuffer."""

    def __init__(self, path: str | Path, cfg: LMConfig, chunk: int) -> None:
        super().__init__(cfg, chunk)
        self.path = Path(path)
        self.interpreter = interpreter(self.path)
        found = self.interpreter.get_signature_list()
        if any(name not in found for name in LM_SIGNATURES):
            raise RunError(f"{path} has signatures {sorted(found)}; a genlab LM export has {list(LM_SIGNATURES)}")
        self.signatures = {name: Signature(self.interpreter, name) for name in LM_SIGNATURES}
        self.names = io_names(cfg.n_layer)

    def run(self, which, tokens, input_pos, caches):
        out = self.signatures[which](tokens=tokens, input_pos=input_pos,
                                     **dict(zip(self.names, caches, strict=True)))
        return out["logits"], [out[n] for n in self.names]


def run_image_model(path: str | Path, z, labels=None) -> np.ndarray:
    """Images (batch, channels, H, W) in [0, 1] from an exported generator.tflite (batch as exported)."""
    signature = Signature(interpreter(Path(path)), IMAGE_SIGNATURE)
    inputs = {"z": np.asarray(z, dtype=np.float32)}
    if labels is not None:
        inputs["labels"] = np.asarray(labels)
    return signature(**inputs)["images"]


def open_artifact(path: Path, device: str = "auto") -> Opened:
    meta = lm_bundle_meta(path, "LiteRT")
    runner = LiteRTRunner(path / meta["files"]["lm"], LMConfig.from_dict(meta["model"]), int(meta["chunk"]))
    return opened_bundle(path, meta, runner, NAME)
