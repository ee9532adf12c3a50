"""ONNX export of the LM with a KV cache, and the onnxruntime model behind ``genlab.load(PATH.onnx)``.

One graph serves prefill and decode:

    inputs   input_ids (batch, seq) int64; past.{i}.k / past.{i}.v (batch, n_kv_head, past, head_dim)
    outputs  logits (batch, seq, vocab); present.{i}.k / present.{i}.v (batch, n_kv_head, past + seq, head_dim)

Prefill passes past tensors of length 0; each decode step passes the previous presents. The graph
is traced from the model's own ``forward`` (torch.onnx's dynamo exporter, which needs onnxscript)
with a stand-in cache that concatenates instead of writing into pre-allocated buffers. It is traced
with seq >= 2 and past >= 1, so the attention takes its general branch (an explicit causal mask
offset by the cached length), which is exact for every seq and past the graph is later run with.

The tokenizer and a small genlab config travel inside the file's metadata_props, so one .onnx is
everything ``genlab generate text PATH.onnx`` needs. ``--int8`` rewrites the matrix products with
onnxruntime's dynamic quantizer (int8 weights, activations quantized per call).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import genlab
from genlab import runs
from genlab.data import tokenizer as tokmod
from genlab.errors import RunError
from genlab.export.common import ExportError, Parity, export_figures, logit_parity, probe_tokens, staged_file
from genlab.models.transformer import LMConfig, Transformer
from genlab.optimize.quantize import load_float_model

FORMAT = "genlab-lm-kv/1"
TOLERANCE = 1e-4  # fp32 graph vs fp32 PyTorch
# int8 graphs are compared with the float model too, so the difference is the quantization error;
# it is bounded relative to the size of the logits (measured on the tiny test model: ~1.6%).
INT8_RELATIVE_TOLERANCE = 0.05
OPSET = 18


def _names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in "kv"]


class _ConcatCache:
    """Stands in for KVCache while tracing: appends this step's keys/values to the past ones and
    keeps the results as the graph's ``present`` outputs."""

    def __init__(self, past: list[torch.Tensor]) -> None:
        self.past = past
        self.present: list[torch.Tensor] = []
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        k = torch.cat([self.past[2 * layer], k], dim=2)
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present += [k, v]
        return k, v


class _Decoder(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past: list[torch.Tensor]):
        cache = _ConcatCache(past)
        logits = self.model(input_ids, cache, past[0].shape[2])
        return (logits, *cache.present)


def _require_onnx():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing); "
                          f"pip install 'genlab[export]'") from None
    return onnx, onnxruntime


def _trace(model: Transformer, path: Path) -> None:
    cfg = model.cfg
    if cfg.context < 4:
        raise ExportError(f"ONNX export needs a context of at least 4 tokens (got {cfg.context})")
    if model.num_params() * 4 > 1.9e9:
        raise ExportError("models over 2 GB need ONNX external data files, which genlab's export does not "
                          "write yet; export to gguf or hf instead")
    ids = probe_tokens(cfg.vocab_size, 3)
    past = [torch.zeros(1, cfg.n_kv_head, 2, cfg.head_dim) for _ in range(2 * cfg.n_layer)]
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=cfg.context)
    past_len = torch.export.Dim("past", min=1, max=cfg.context - 1)
    shapes = {"input_ids": {0: batch, 1: seq}, "past": [{0: batch, 2: past_len}] * (2 * cfg.n_layer)}
    _export_graph(_Decoder(model).eval(), (ids, past), shapes, ["input_ids", *_names(cfg.n_layer, "past")],
                  ["logits", *_names(cfg.n_layer, "present")], path)


def _export_graph(module: nn.Module, args: tuple, shapes, input_names: list[str], output_names: list[str],
                  path: Path) -> None:
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, skipped torchvision ops)
        onnx_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                                        input_names=input_names, output_names=output_names, optimize=True,
                                        verbose=False)
        finally:
            onnx_log.setLevel(level)
    program.save(str(path))


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # the quantizer's advice to pre-process goes to the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Put genlab's metadata (config, tokenizer) into the file's metadata_props (and drop debug records)."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:  # the exporter's per-node debug records (stack traces): a third of the file
        del node.metadata_props[:]
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update(props)
    del proto.metadata_props[:]
    for k, v in merged.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "genlab"
    onnx.save(proto, str(path))


def _lm_props(cfg: LMConfig, tok_path: Path, int8: bool) -> dict[str, str]:
    meta = {"format": FORMAT, "genlab_version": genlab.__version__, "model": cfg.to_dict(), "int8": int8,
            "eos_token": tokmod.EOT}
    return {"genlab.config": json.dumps(meta), "genlab.tokenizer": tok_path.read_text()}


@torch.no_grad()
def export_onnx(run: str | Path, out: str | Path, int8: bool = False, overwrite: bool = False,
                log=print) -> Parity:
    """Export ``run`` to the .onnx file ``out``; the parity check runs before the file is put in place.
    LM runs export the decoder with its KV cache, GAN/VAE runs their generator/decoder."""
    _require_onnx()
    run, out = Path(run), Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out for onnx must end in .onnx (got '{out}')")
    if runs.read_config(run)["family"] in ("gan", "vae"):
        return export_image_onnx(run, out, int8=int8, overwrite=overwrite, log=log)
    model, _ = load_float_model(run)
    with staged_file(out, overwrite) as tmp, tempfile.TemporaryDirectory(dir=out.parent) as work:
        traced = Path(work) / "model.onnx"
        _trace(model, traced)
        if int8:
            _int8(traced, Path(work) / "int8.onnx")
            traced = Path(work) / "int8.onnx"
        _stamp(traced, _lm_props(model.cfg, run / runs.TOKENIZER, int8))
        os.replace(traced, tmp)
        parity = onnx_parity(model, OnnxTransformer(tmp), int8=int8)
        log(parity.line())
        parity.check()
        log(export_figures(run, load_onnx_lm(tmp))[1])
    return parity




def onnx_parity(model: Transformer, onnx_model: OnnxTransformer, prompt: int = 16, steps: int = 8,
                int8: bool = False) -> Parity:
    """onnxruntime against PyTorch over a prefill and decode steps through the KV cache."""
    return logit_parity(model, onnx_model, model.cfg.vocab_size, model.cfg.context,
                        f"onnxruntime{' int8' if int8 else ''}", prompt, steps, TOLERANCE,
                        INT8_RELATIVE_TOLERANCE if int8 else None)


# ---- image models: the generator / decoder --------------------------------------------------------

IMAGE_FORMAT = "genlab-image/1"


def export_image_onnx(run: Path, out: Path, int8: bool = False, overwrite: bool = False, log=print) -> Parity:
    """The GAN's generator or VAE's decoder as one graph, ``z (batch, latent)`` [+ ``labels (batch,)``
    int64] -> ``images (batch, channels, size, size)`` in [0, 1], with a dynamic batch."""
    from genlab.export.image import (
        LOW_PRECISION_PIXEL_TOLERANCE,
        PIXEL_TOLERANCE,
        example_inputs,
        image_meta,
        image_parity,
        load_image_decoder,
    )

    _, ort = _require_onnx()
    gen, decoder = load_image_decoder(run)
    args = example_inputs(decoder, batch=2)
    names = ["z", "labels"][: len(args)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {"z": {0: batch}, **({"labels": {0: batch}} if decoder.conditional else {})}
    with staged_file(out, overwrite) as tmp, tempfile.TemporaryDirectory(dir=out.parent) as work:
        traced = Path(work) / "model.onnx"
        _export_graph(decoder, args, shapes, names, ["images"], traced)
        if int8:
            _int8(traced, Path(work) / "int8.onnx")
            traced = Path(work) / "int8.onnx"
        meta = {"format": IMAGE_FORMAT, "genlab_version": genlab.__version__, "family": gen.family, "int8": int8,
                **image_meta(gen)}
        _stamp(traced, {"genlab.config": json.dumps(meta)})
        os.replace(traced, tmp)
        probe = example_inputs(decoder, batch=8, seed=1)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: a.numpy() for n, a in zip(names, probe, strict=True)})[0]
        with torch.no_grad():
            ref = decoder(*probe)
        parity = image_parity(ref, got, f"onnxruntime{' int8' if int8 else ''} vs PyTorch, {len(ref)} images",
                              LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE)
        log(parity.line())
        parity.check()
    return parity


# ---- running an export ------------------------------------------------------------------------

class OnnxCache:
    """The past keys/values as numpy arrays; each call replaces them with the graph's presents."""

    def __init__(self, cfg: LMConfig, batch: int) -> None:
        empty = np.zeros((batch, cfg.n_kv_head, 0, cfg.head_dim), dtype=np.float32)
        self.past = [empty] * (2 * cfg.n_layer)
        self.length = 0


class OnnxTransformer:
    """An exported LM in onnxruntime, with the calling convention of ``Transformer`` (logits for
    ``idx``, continuing the cache at ``start``), so ``LanguageModel`` samples from it unchanged."""

    device = torch.device("cpu")

    def __init__(self, path: str | Path) -> None:
        _, ort = _require_onnx()
        path = Path(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RunError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:120]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "genlab.config" not in props:
            raise RunError(f"{path} is not a genlab ONNX export (no genlab metadata); export it with "
                           f"`genlab export RUN --format onnx`")
        self.meta = json.loads(props["genlab.config"])
        if self.meta.get("format") == IMAGE_FORMAT:
            raise RunError(f"{path} holds an exported image {self.meta.get('family')} (z, labels -> images), not a "
                           f"language model; run it with onnxruntime")
        if self.meta.get("format") != FORMAT:
            raise RunError(f"{path}: unsupported genlab ONNX format {self.meta.get('format')!r}")
        self.cfg = LMConfig.from_dict(self.meta["model"])
        self.tokenizer_json = props["genlab.tokenizer"]
        self.past_names = _names(self.cfg.n_layer, "past")

    def eval(self) -> OnnxTransformer:
        return self

    def new_cache(self, batch: int = 1, max_len: int | None = None, dtype=None) -> OnnxCache:
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


def load_onnx_lm(path: str | Path):
    """A ``LanguageModel`` that generates through onnxruntime (``genlab.load("model.onnx")``)."""
    from tokenizers import Tokenizer

    from genlab.generate.text import LanguageModel

    path = Path(path)
    if not path.is_file():
        raise RunError(f"'{path}' does not exist; export one with `genlab export RUN --format onnx --out {path}`")
    model = OnnxTransformer(path)
    lm = LanguageModel(model, Tokenizer.from_str(model.tokenizer_json), path)  # type: ignore[arg-type]
    lm.eot = lm.tokenizer.token_to_id(model.meta.get("eos_token") or tokmod.EOT)
    return lm
