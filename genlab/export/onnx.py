"""ONNX export: the LM with a KV cache, a GAN/VAE generator, or an upscaler (genlab.runtimes.onnx runs
the LM; `genlab upscale FILE.onnx` runs an exported upscaler).

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
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

import genlab
from genlab import runs
from genlab.data import tokenizer as tokmod
from genlab.export.common import (
    FP32_TOLERANCE,
    INT8_RELATIVE_TOLERANCE,
    Exporter,
    ExportError,
    ExportOptions,
    ExportReport,
    Parity,
    lm_report,
    logit_parity,
    probe_tokens,
)
from genlab.models.transformer import Cache, LMConfig, Transformer
from genlab.quiet import quiet
from genlab.runtimes.onnx import IMAGE_FORMAT, LM_FORMAT, UPSCALE_FORMAT, OnnxRunner, kv_names, session
from genlab.runtimes.pytorch import load_float_model

OPSET = 18


class _ConcatCache(Cache):
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
    _export_graph(_Decoder(model).eval(), (ids, past), shapes, ["input_ids", *kv_names(cfg.n_layer, "past")],
                  ["logits", *kv_names(cfg.n_layer, "present")], path)


def _export_graph(module: nn.Module, args: tuple, shapes, input_names: list[str], output_names: list[str],
                  path: Path) -> None:
    with quiet("torch.onnx"):  # exporter chatter (deprecations, skipped torchvision ops)
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                                    input_names=input_names, output_names=output_names, optimize=True,
                                    verbose=False)
    program.save(str(path))


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet(root=True):  # the quantizer's advice to pre-process goes to the root logger
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


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
    meta = {"format": LM_FORMAT, "genlab_version": genlab.__version__, "model": cfg.to_dict(), "int8": int8,
            "eos_token": tokmod.EOT}
    return {"genlab.config": json.dumps(meta), "genlab.tokenizer": tok_path.read_text()}


@torch.no_grad()
def export_onnx(run: str | Path, out: str | Path, int8: bool = False, overwrite: bool = False,
                log=print) -> ExportReport:
    """Export ``run`` to the .onnx file ``out``; the parity check runs before the file is put in place.
    LM runs export the decoder with its KV cache, GAN/VAE runs their generator/decoder."""
    _require_onnx()
    run, out = Path(run), Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out for onnx must end in .onnx (got '{out}')")
    family = runs.read_config(run)["family"]
    if family in ("gan", "vae"):
        return export_image_onnx(run, out, int8=int8, overwrite=overwrite, log=log)
    if family == "upscale":
        return export_upscale_onnx(run, out, int8=int8, overwrite=overwrite, log=log)
    model, _ = load_float_model(run)
    with runs.staged_file(out, overwrite, ExportError) as tmp, tempfile.TemporaryDirectory(dir=out.parent) as work:
        traced = Path(work) / "model.onnx"
        _trace(model, traced)
        if int8:
            _int8(traced, Path(work) / "int8.onnx")
            traced = Path(work) / "int8.onnx"
        _stamp(traced, _lm_props(model.cfg, run / runs.TOKENIZER, int8))
        os.replace(traced, tmp)
        runner = OnnxRunner(tmp)
        parity = onnx_parity(model, runner, int8=int8)
        log(parity.line())
        parity.check()
        return lm_report("onnx", out, [out], parity, run, runner, out, log)


def onnx_parity(model: Transformer, onnx_model: OnnxRunner, prompt: int = 16, steps: int = 8,
                int8: bool = False) -> Parity:
    """onnxruntime against PyTorch over a prefill and decode steps through the KV cache."""
    return logit_parity(model, onnx_model, model.cfg.vocab_size, model.cfg.context,
                        f"onnxruntime{' int8' if int8 else ''}", prompt, steps, FP32_TOLERANCE,
                        INT8_RELATIVE_TOLERANCE if int8 else None)


# ---- image models: the generator / decoder --------------------------------------------------------

def export_image_onnx(run: Path, out: Path, int8: bool = False, overwrite: bool = False, log=print) -> ExportReport:
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

    _require_onnx()
    gen, decoder = load_image_decoder(run)
    args = example_inputs(decoder, batch=2)
    names = ["z", "labels"][: len(args)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {"z": {0: batch}, **({"labels": {0: batch}} if decoder.conditional else {})}
    with runs.staged_file(out, overwrite, ExportError) as tmp, tempfile.TemporaryDirectory(dir=out.parent) as work:
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
        got = session(tmp).run(None, {n: a.numpy() for n, a in zip(names, probe, strict=True)})[0]
        with torch.no_grad():
            ref = decoder(*probe)
        parity = image_parity(ref, got, f"onnxruntime{' int8' if int8 else ''} vs PyTorch, {len(ref)} images",
                              LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE)
        log(parity.line())
        parity.check()
    return ExportReport("onnx", out, [out], [parity])


# ---- upscalers ----------------------------------------------------------------------------------------

def export_upscale_onnx(run: Path, out: Path, int8: bool = False, overwrite: bool = False,
                        log=print) -> ExportReport:
    """The super-resolution network (bicubic plus the learned residual) as one fully convolutional graph,
    ``low (batch, channels, height, width)`` -> ``high (batch, channels, height * s, width * s)``, pixels in
    [0, 1] and not clamped, every dimension dynamic. Parity: onnxruntime against PyTorch on two sizes
    (one square, one not), as the graph must hold for any frame it is given."""
    from genlab.export.image import LOW_PRECISION_PIXEL_TOLERANCE, PIXEL_TOLERANCE, image_parity
    from genlab.generate.upscale import ImageUpscaler

    _require_onnx()
    up = ImageUpscaler.from_run(run, device="cpu")
    model, cfg = up.model, up.model.cfg
    g = torch.Generator().manual_seed(0)
    probe = torch.rand(2, cfg.channels, 20, 24, generator=g)
    dims = {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=4, max=8192),
            3: torch.export.Dim("width", min=4, max=8192)}
    with runs.staged_file(out, overwrite, ExportError) as tmp, tempfile.TemporaryDirectory(dir=out.parent) as work:
        traced = Path(work) / "model.onnx"
        _export_graph(model, (probe,), {"x": dims}, ["low"], ["high"], traced)
        if int8:
            _int8(traced, Path(work) / "int8.onnx")
            traced = Path(work) / "int8.onnx"
        meta = {"format": UPSCALE_FORMAT, "genlab_version": genlab.__version__, "family": "upscale", "int8": int8,
                "model": cfg.to_dict(), "pixel_range": [0.0, 1.0]}
        _stamp(traced, {"genlab.config": json.dumps(meta)})
        os.replace(traced, tmp)
        sess = session(tmp)
        tolerance = LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE
        parities = []
        for shape in ((3, cfg.channels, 16, 16), (1, cfg.channels, 23, 37)):
            x = torch.rand(*shape, generator=g)
            with torch.no_grad():
                ref = model(x)
            got = sess.run(None, {"low": x.numpy()})[0]
            parities.append(image_parity(ref, got, f"onnxruntime{' int8' if int8 else ''} vs PyTorch, "
                                                   f"{shape[0]} x {shape[2]}x{shape[3]} px", tolerance))
            log(parities[-1].line())
        for parity in parities:
            parity.check()
    return ExportReport("onnx", out, [out], parities)


def _default_name(run: Path, opts: ExportOptions) -> str:
    return f"{run.name}{'-int8' if opts.int8 else ''}.onnx"


EXPORTER = Exporter(
    name="onnx", summary="one .onnx file for onnxruntime (LM with KV cache, image generator, or upscaler)",
    families=("lm", "gan", "vae", "upscale"), options=("int8",), default_name=_default_name,
    export=lambda run, out, opts, overwrite, log: export_onnx(run, out, opts.int8, overwrite, log))
