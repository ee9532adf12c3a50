"""LiteRT (TensorFlow Lite) export, converted with litert-torch, and the runner behind
``genlab.load(FOLDER)`` for such an export (run by ai-edge-litert's interpreter).

The export is a folder (written all at once, after the parity check):

    LM run       model.tflite, tokenizer.json, genlab-export.json
    GAN / VAE    generator.tflite, genlab-export.json

``model.tflite`` is ONE flatbuffer with two signatures, both traced from ``StaticKVLM`` (the LM with a
fixed-size KV cache, see static.py), so they share the weights:

    prefill  tokens (1, chunk) int32, input_pos (chunk,) int32, k_0, v_0, k_1, v_1, ...
             -> logits (1, chunk, vocab), k_0, v_0, k_1, v_1, ...
    decode   tokens (1, 1) int32, input_pos (1,) int32, k_0, v_0, ... -> logits (1, 1, vocab), k_0, v_0, ...

Inputs and outputs are named (TFLite signature keys), so a caller never depends on their order. The
cache tensors ``k_{i}`` / ``v_{i}`` are layer i's keys and values, (1, n_kv_head, context, head_dim)
float32 each (static.py calls them ``k.{i}``; a dot cannot name a traced input). Each call returns
the caches with its own keys/values written at ``input_pos``; the caller feeds them to the next call.
``chunk`` is in genlab-export.json. Token ids and positions are int32: litert-torch narrows the
graph's int64 inputs to int32 (mobile runtimes lack 64-bit kernels), and the runner below converts
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

import io
import logging
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genlab import runs
from genlab.export.common import (
    ExportError,
    Parity,
    export_figures,
    logit_parity,
    require,
    runner_lm,
    staged_dir,
    write_bundle_meta,
)
from genlab.export.static import EagerStaticRunner, StaticKVLM, StaticRunner, cache_names, prefill_chunk
from genlab.models.transformer import LMConfig, Transformer

LM_FILE = "model.tflite"
IMAGE_FILE = "generator.tflite"
SIGNATURES = ("prefill", "decode")
IMAGE_SIGNATURE = "generator"
IMAGE_BATCH = 4  # the image signature's static batch: an app asks for several samples at once

# fp32 flatbuffer vs the same static graph in fp32 PyTorch (measured on the tiny test model: ~2e-6;
# XNNPACK sums in another order, nothing more).
TOLERANCE = 1e-4
# int8 is compared with the float graph, so the difference is the quantization error, bounded
# relative to the size of the logits as for onnx --int8 (measured on the tiny test model: ~1.3%).
INT8_RELATIVE_TOLERANCE = 0.05


def io_names(n_layer: int) -> list[str]:
    """The signatures' cache names: k_0, v_0, k_1, v_1, ... (static.py's k.0, v.0, ... with '_')."""
    return [name.replace(".", "_") for name in cache_names(n_layer)]


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
    """Silence the converter and the runtime: litert-torch prints progress lines, and absl, the
    quantizer and the interpreter write to stdout/stderr from C++ as well as from Python, so both
    file descriptors (and Python's streams, logging and warnings) go elsewhere for the block. What
    was written is shown only if the block fails, to keep the diagnostics."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    progress = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # what litert_torch.config.show_progress reads
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        logging.disable(logging.WARNING)  # the converter's advice goes to the root logger
        try:
            with redirect_stdout(text), redirect_stderr(text), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            sink.seek(0)
            said = sink.read().decode(errors="replace") + text.getvalue()
            os.write(saved[1], said[-4000:].encode())
            raise
        finally:
            logging.disable(logging.NOTSET)
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
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


def _interpreter(path: Path):
    """ai-edge-litert's interpreter for ``path``, on as many threads as PyTorch uses."""
    module = require("ai_edge_litert.interpreter", "tflite", "running a LiteRT model")
    with _quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate" and similar
        interpreter = module.Interpreter(model_path=str(path), num_threads=torch.get_num_threads())
        interpreter.allocate_tensors()
    return interpreter


class _Signature:
    """One signature of a flatbuffer, called with numpy arrays by name; each input is converted to
    the dtype the signature declares (int64 token ids become int32)."""

    def __init__(self, interpreter, name: str) -> None:
        self.runner = interpreter.get_signature_runner(name)
        self.dtypes = {k: d["dtype"] for k, d in self.runner.get_input_details().items()}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.dtypes) - set(inputs)
        if missing:
            raise ExportError(f"LiteRT signature expects inputs {sorted(self.dtypes)}; missing {sorted(missing)}")
        return self.runner(**{k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in inputs.items()})


# ---- running an export ------------------------------------------------------------------------

class LiteRTRunner(StaticRunner):
    """The exported LM in ai-edge-litert: the "prefill" and "decode" signatures of one flatbuffer."""

    def __init__(self, path: str | Path, cfg: LMConfig, chunk: int) -> None:
        super().__init__(cfg, chunk)
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"'{path}' does not exist")
        self.path = path
        self.interpreter = _interpreter(path)
        found = self.interpreter.get_signature_list()
        if any(name not in found for name in SIGNATURES):
            raise ExportError(f"{path} has signatures {sorted(found)}; a genlab LM export has {list(SIGNATURES)}")
        self.signatures = {name: _Signature(self.interpreter, name) for name in SIGNATURES}
        self.names = io_names(cfg.n_layer)

    def run(self, which, tokens, input_pos, caches):
        out = self.signatures[which](tokens=tokens, input_pos=input_pos,
                                     **dict(zip(self.names, caches, strict=True)))
        return out["logits"], [out[n] for n in self.names]


def load_bundle_runner(folder: Path, meta: dict) -> LiteRTRunner:
    """The runner for an LM export folder (``genlab.export.common.load_bundle_lm`` calls this)."""
    return LiteRTRunner(Path(folder) / meta["files"]["lm"], LMConfig.from_dict(meta["model"]), int(meta["chunk"]))


def run_image_model(path: str | Path, z, labels=None) -> np.ndarray:
    """Images (batch, channels, H, W) in [0, 1] from an exported generator.tflite (batch as exported)."""
    signature = _Signature(_interpreter(Path(path)), IMAGE_SIGNATURE)
    inputs = {"z": np.asarray(z, dtype=np.float32)}
    if labels is not None:
        inputs["labels"] = np.asarray(labels)
    return signature(**inputs)["images"]


# ---- parity -----------------------------------------------------------------------------------

def lm_parity(model: Transformer, runner: StaticRunner, int8: bool = False, steps: int = 8) -> Parity:
    """The export against the same static graph in PyTorch: a prefill longer than one chunk (so a
    padded chunk and a cache carried between prefill calls are covered), then decode steps."""
    return logit_parity(EagerStaticRunner(model, runner.chunk), runner, model.cfg.vocab_size, model.cfg.context,
                        f"LiteRT{' int8' if int8 else ''}", runner.chunk + runner.chunk // 4, steps, TOLERANCE,
                        INT8_RELATIVE_TOLERANCE if int8 else None, detail=f" (chunks of {runner.chunk})")


# ---- export -----------------------------------------------------------------------------------

@torch.no_grad()
def export_tflite(run: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False,
                  log=print) -> list[Parity]:
    """Export an LM, GAN or VAE run to the LiteRT folder ``out`` (layout in the module docstring).

    ``int8``: dynamic-range int8, i.e. the weights of the matrix and convolution ops stored as int8
    (one scale per output channel) and activations quantized per call by the runtime; the rest fp32.
    The parity check runs before ``out`` is put in place; on failure nothing is written."""
    with _quiet():  # importing litert_torch reports optional kernels it cannot load
        require("litert_torch", "tflite", "LiteRT export")
    require("ai_edge_litert.interpreter", "tflite", "running a LiteRT model")
    run, out = Path(run), Path(out)
    family = runs.read_config(run).get("family")
    if family == "lm":
        return _export_lm(run, out, int8, overwrite, log)
    if family in ("gan", "vae"):
        return _export_image(run, out, int8, overwrite, log)
    raise ExportError(f"LiteRT export supports LM, GAN and VAE runs; '{run}' is a {family} run")


def _export_lm(run: Path, out: Path, int8: bool, overwrite: bool, log) -> list[Parity]:
    from genlab.optimize.quantize import load_float_model

    model, cfg = load_float_model(run)
    chunk = prefill_chunk(model.cfg.context)
    with staged_dir(out, overwrite) as folder:
        named = _NamedLM(model)
        _convert([("prefill", named, named.sample_inputs(chunk)), ("decode", named, named.sample_inputs(1))],
                 folder / LM_FILE, int8)
        runner = LiteRTRunner(folder / LM_FILE, model.cfg, chunk)
        parity = lm_parity(model, runner, int8=int8)
        log(parity.line())
        parity.check()

        # The fuller figures, through the same sampling code as every genlab LM.
        figures, line = export_figures(run, runner_lm(runner, run / runs.TOKENIZER, cfg.get("eos_token"), folder))
        log(line)

        names = io_names(model.cfg.n_layer)
        write_bundle_meta(folder, "tflite", run, {"lm": LM_FILE}, [parity], chunk=chunk,
                          precision="dynamic-int8" if int8 else "fp32", signatures=list(SIGNATURES),
                          inputs=["tokens", "input_pos", *names], outputs=["logits", *names], figures=figures)
    log(f"wrote {out}: {LM_FILE} {(out / LM_FILE).stat().st_size:,} bytes")
    return [parity]



def _export_image(run: Path, out: Path, int8: bool, overwrite: bool, log) -> list[Parity]:
    from genlab.export.image import (
        LOW_PRECISION_PIXEL_TOLERANCE,
        PIXEL_TOLERANCE,
        example_inputs,
        image_meta,
        image_parity,
        load_image_decoder,
    )

    gen, decoder = load_image_decoder(run)
    inputs = example_inputs(decoder, IMAGE_BATCH)
    sample = dict(zip(("z", "labels"), inputs, strict=False))  # an unconditional model has no labels
    with staged_dir(out, overwrite) as folder:
        _convert([(IMAGE_SIGNATURE, _NamedImage(decoder), sample)], folder / IMAGE_FILE, int8)
        got = run_image_model(folder / IMAGE_FILE, *inputs)
        what = f"LiteRT{' int8' if int8 else ''} vs PyTorch, {IMAGE_BATCH} images"
        parity = image_parity(decoder(*inputs), got, what, LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE)
        log(parity.line())
        parity.check()
        write_bundle_meta(folder, "tflite", run, {"generator": IMAGE_FILE}, [parity], batch=IMAGE_BATCH,
                          precision="dynamic-int8" if int8 else "fp32", signatures=[IMAGE_SIGNATURE],
                          inputs=list(sample), outputs=["images"], **image_meta(gen))
    log(f"wrote {out}: {IMAGE_FILE} {(out / IMAGE_FILE).stat().st_size:,} bytes")
    return [parity]
