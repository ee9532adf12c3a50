"""genlab's ONNX LM exports in onnxruntime (the graph's contract is in genlab.export.onnx).

The file carries everything needed to run it: the graph, and in its metadata_props the genlab config
(``genlab.config``) and the tokenizer (``genlab.tokenizer``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from genlab.data import tokenizer as tokmod
from genlab.errors import RunError
from genlab.models.transformer import LMConfig
from genlab.runtimes.base import Opened

NAME = "onnxruntime"
ARTIFACT = "a genlab .onnx export"
LM_FORMAT = "genlab-lm-kv/1"
IMAGE_FORMAT = "genlab-image/1"
UPSCALE_FORMAT = "genlab-upscale/1"  # low (N, C, h, w) -> high (N, C, h*s, w*s); run by genlab.generate.upscale


def detect(path: Path) -> bool:
    return path.suffix == ".onnx"


def kv_names(n_layer: int, prefix: str) -> list[str]:
    """The graph's cache inputs (``past.{i}.k``/``.v``) or outputs (``present...``)."""
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in "kv"]


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise RunError("running an .onnx file needs onnxruntime: pip install 'genlab[export]'") from None
    return onnxruntime


def session(path: Path):
    """An onnxruntime CPU session for ``path``, quiet, with a one-line error for a bad file."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RunError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:120]})") from None


class OnnxCache:
    """The past keys/values as numpy arrays; each call replaces them with the graph's presents."""

    def __init__(self, cfg: LMConfig, batch: int) -> None:
        empty = np.zeros((batch, cfg.n_kv_head, 0, cfg.head_dim), dtype=np.float32)
        self.past = [empty] * (2 * cfg.n_layer)
        self.length = 0


class OnnxRunner:
    """An exported LM in onnxruntime behind the ``Runner`` call."""

    device = torch.device("cpu")
    batching = False  # the past tensors have one length for the whole batch

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.session = session(path)
        props = self.session.get_modelmeta().custom_metadata_map
        if "genlab.config" not in props:
            raise RunError(f"{path} is not a genlab ONNX export (no genlab metadata); export it with "
                           f"`genlab export RUN --format onnx`")
        self.meta = json.loads(props["genlab.config"])
        if self.meta.get("format") == IMAGE_FORMAT:
            raise RunError(f"{path} holds an exported image {self.meta.get('family')} (z, labels -> images), not a "
                           f"language model; run it with onnxruntime")
        if self.meta.get("format") == UPSCALE_FORMAT:
            raise RunError(f"{path} holds an exported upscaler, not a language model; run it with "
                           f"`genlab upscale {path} IN --out OUT`")
        if self.meta.get("format") != LM_FORMAT:
            raise RunError(f"{path}: unsupported genlab ONNX format {self.meta.get('format')!r}")
        self.cfg = LMConfig.from_dict(self.meta["model"])
        self.tokenizer_json = props["genlab.tokenizer"]
        self.past_names = kv_names(self.cfg.n_layer, "past")

    def new_cache(self, batch: int = 1) -> OnnxCache:
        return OnnxCache(self.cfg, batch)

    def __call__(self, idx: torch.Tensor, cache: OnnxCache | None = None, start: int = 0) -> torch.Tensor:
        T = idx.shape[1]
        if start + T > self.cfg.context:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.cfg.context}")
        if cache is None:
            cache = OnnxCache(self.cfg, idx.shape[0])
        elif start != cache.length:
            raise ValueError(f"the ONNX cache holds {cache.length} positions; cannot continue at {start}")
        feed = {"input_ids": idx.detach().cpu().numpy().astype(np.int64)}
        feed.update(zip(self.past_names, cache.past, strict=True))
        logits, *present = self.session.run(None, feed)
        cache.past, cache.length = present, start + T
        return torch.from_numpy(logits)


def open_artifact(path: Path, device: str = "auto") -> Opened:
    if not path.is_file():
        raise RunError(f"'{path}' does not exist; export one with `genlab export RUN --format onnx --out {path}`")
    runner = OnnxRunner(path)
    tok = Tokenizer.from_str(runner.tokenizer_json)
    eot = tok.token_to_id(runner.meta.get("eos_token") or tokmod.EOT)
    return Opened(runner, tok, eot, path, NAME, "int8" if runner.meta.get("int8") else "fp32",
                  {k: runner.meta[k] for k in ("data",) if k in runner.meta})
