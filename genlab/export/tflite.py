"""LiteRT (TensorFlow Lite) export, converted with litert-torch (genlab.runtimes.litert runs it).

The export is a folder (written all at once, after the parity check):

    LM run       model.tflite, tokenizer.json, genlab-export.json
    GAN / VAE    generator.tflite, genlab-export.json

``model.tflite`` is ONE flatbuffer with two signatures, both traced from ``StaticKVLM`` (the LM with a
fixed-size KV cache, see genlab/runtimes/static.py), so they share the weights:

    prefill  tokens (1, chunk) int32, input_pos (chunk,) int32, k_0, v_0, k_1, v_1, ...
             -> logits (1, chunk, vocab), k_0, v_0, k_1, v_1, ...
    decode   tokens (1, 1) int32, input_pos (1,) int32, k_0, v_0, ... -> logits (1, 1, vocab), k_0, v_0, ...

Inputs and outputs are named (TFLite signature keys), so a caller never depends on their order. The
cache tensors ``k_{i}`` / ``v_{i}`` are layer i's keys and values, (1, n_kv_head, context, head_dim)
float32 each (static.py calls them ``k.{i}``; a dot cannot name a traced input). Each call returns
the caches with its own keys/values written at ``input_pos``; the caller feeds them to the next call.
``chunk`` is in genlab-export.json. Token ids and positions are int32: litert-torch narrows the
graph's int64 inputs to int32 (mobile runtimes lack 64-bit kernels), and the runner converts
to whatever dtype the signature reports.

``generator.tflite`` has one signature, "generator", with a static batch (``batch`` in the meta):

    z (batch, latent_dim) float32 [, labels (batch,) int32] -> images (batch, channels, H, W) float32 in [0, 1]

``int8=True`` is dynamic-range int8 (litert-torch's ``full_dynamic_recipe``, applied by
ai-edge-quantizer to the converted flatbuffer): the constant weights of the fully connected,
convolution / transposed convolution and embedding-lookup ops are stored as int8 with one fp32 scale
per output channel (for the tiny LM: every attention and MLP matrix and the tied embedding / LM head,
stored once and shared by both signatures); activations stay fp32 in the graph and are quantized per
call by the kernels. The KV caches, norms, rotary tables and the rest stay fp32.
"""


from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from genlab import runs
from genlab.export.common import Exporter, ExportError, ExportReport, require
from genlab.export.edge import export_static_image, export_static_lm
from genlab.models.transformer import Transformer
from genlab.quiet import quiet
from genlab.runtimes.litert import IMAGE_SIGNATURE, LM_SIGNATURES, LiteRTRunner, io_names, run_image_model
from genlab.runtimes.static import StaticKVLM

LM_FILE = "model.tflite"
IMAGE_FILE = "generator.tflite"
IMAGE_BATCH = 4  # the image signature's static batch: an app asks for several samples at once


class _NamedLM(nn.Module):
    """StaticKVLM with keyword inputs and a dict of outputs: litert-torch turns keyword names into
    the signature's input names and dict keys into its output names."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.lm = StaticKVLM(model)
        self.names = io_names(model.cfg.n_layer)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, *caches = self.lm(inputs["tokens"], inputs["input_pos"], *[inputs[n] for n in self.names])
        return {"logits": logits, **dict(zip(self.names, caches, strict=True))}

    def sample_inputs(self, chunk: int) -> dict[str, torch.Tensor]:
        tokens, input_pos, *caches = self.lm.example_inputs(chunk)
        return {"tokens": tokens, "input_pos": input_pos, **dict(zip(self.names, caches, strict=True))}


class _NamedImage(nn.Module):
    """ImageDecoder with a named output ("images")."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"images": self.decoder(z, labels)}


@contextmanager
def _quiet():
    """litert-torch prints progress lines, and absl, the quantizer and the interpreter write to
    stdout/stderr from C++ as well as from Python: silence all of it (shown only if the block fails)."""
    progress = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # what litert_torch.config.show_progress reads
    try:
        with quiet(root=True, fds=True):
            yield
    finally:
        if progress is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = progress


def _convert(signatures: list[tuple[str, nn.Module, dict[str, torch.Tensor]]], path: Path, int8: bool) -> None:
    """Convert ``(name, module, keyword sample inputs)`` signatures into one flatbuffer at ``path``."""
    with _quiet():
        litert_torch = require("litert_torch", "tflite", "LiteRT export")
        converter = litert_torch.Converter()
        for name, module, sample in signatures:
            converter.signature(name, module.eval(), sample_kwargs=sample)
        quant = None
        if int8:
            from litert_torch.generative.quantize import quant_recipes

            quant = quant_recipes.full_dynamic_recipe()  # int8 channelwise weights, dynamic-range kernels
        converter.convert(quant_config=quant).export(str(path))


# ---- export -----------------------------------------------------------------------------------

def export_tflite(run: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False,
                  log=print) -> ExportReport:
    """Export an LM, GAN or VAE run to the LiteRT folder ``out`` (layout in the module docstring).

    ``int8``: dynamic-range int8, i.e. the weights of the matrix and convolution ops stored as int8
    (one scale per output channel) and activations quantized per call by the runtime; the rest fp32.
    The parity check runs before ``out`` is put in place; on failure nothing is written."""
    with _quiet():  # importing litert_torch reports optional kernels it cannot load
        require("litert_torch", "tflite", "LiteRT export")
    require("ai_edge_litert.interpreter", "tflite", "running a LiteRT model")
    run, out = Path(run), Path(out)
    family = runs.read_config(run).get("family")
    label, precision = f"LiteRT{' int8' if int8 else ''}", "dynamic-int8" if int8 else "fp32"
    if family == "lm":
        def build_lm(folder: Path, model: Transformer, chunk: int) -> LiteRTRunner:
            named = _NamedLM(model)
            _convert([("prefill", named, named.sample_inputs(chunk)), ("decode", named, named.sample_inputs(1))],
                     folder / LM_FILE, int8)
            return LiteRTRunner(folder / LM_FILE, model.cfg, chunk)

        return export_static_lm("tflite", run, out, file=LM_FILE, label=label, precision=precision, int8=int8,
                                build=build_lm, cache_io=io_names, overwrite=overwrite, log=log,
                                signatures=list(LM_SIGNATURES))
    if family not in ("gan", "vae"):
        raise ExportError(f"LiteRT export supports LM, GAN and VAE runs; '{run}' is a {family} run")

    def build_image(folder: Path, decoder, inputs: tuple):
        sample = dict(zip(("z", "labels"), inputs, strict=False))  # an unconditional model has no labels
        _convert([(IMAGE_SIGNATURE, _NamedImage(decoder), sample)], folder / IMAGE_FILE, int8)
        return run_image_model(folder / IMAGE_FILE, *inputs)

    return export_static_image("tflite", run, out, file=IMAGE_FILE, label=label, precision=precision, int8=int8,
                               batch=IMAGE_BATCH, build=build_image, overwrite=overwrite, log=log,
                               signatures=[IMAGE_SIGNATURE])


EXPORTER = Exporter(
    name="tflite", summary="LiteRT folder with one .tflite (LM prefill/decode signatures, or image generator)",
    families=("lm", "gan", "vae"), options=("int8",),
    default_name=lambda run, opts: f"{run.name}-tflite{'-int8' if opts.int8 else ''}",
    export=lambda run, out, opts, overwrite, log: export_tflite(run, out, int8=opts.int8, overwrite=overwrite,
                                                                log=log))
