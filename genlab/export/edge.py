"""The skeleton the static-shape edge exports (ExecuTorch, LiteRT) share: each target converts and
runs its files; the parity check, the figures, genlab-export.json and the all-or-nothing folder are
here, once.

A target passes a ``build`` function: for an LM ``build(folder, model, chunk) -> runner`` (write the
program into ``folder`` and return a runner on it); for a GAN/VAE ``build(folder, decoder, inputs)
-> images`` (write the program and return what it generates for ``inputs``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from genlab import runs
from genlab.export.common import (
    FP32_TOLERANCE,
    INT8_RELATIVE_TOLERANCE,
    ExportError,
    ExportReport,
    Parity,
    lm_report,
    logit_parity,
    write_bundle_meta,
)
from genlab.export.image import (
    LOW_PRECISION_PIXEL_TOLERANCE,
    PIXEL_TOLERANCE,
    example_inputs,
    image_meta,
    image_parity,
    load_image_decoder,
)
from genlab.models.transformer import Transformer
from genlab.runtimes.pytorch import load_float_model
from genlab.runtimes.static import EagerStaticRunner, StaticRunner, prefill_chunk


def static_lm_parity(model: Transformer, runner: StaticRunner, label: str, int8: bool, steps: int = 8) -> Parity:
    """The export against the same static graph in PyTorch: a prefill longer than one chunk (so a
    padded chunk and a cache carried between prefill calls are covered), then decode steps."""
    return logit_parity(EagerStaticRunner(model, runner.chunk), runner, model.cfg.vocab_size, model.cfg.context,
                        label, runner.chunk + runner.chunk // 4, steps, FP32_TOLERANCE,
                        INT8_RELATIVE_TOLERANCE if int8 else None, detail=f" (chunks of {runner.chunk})")


@torch.no_grad()
def export_static_lm(fmt: str, run: Path, out: Path, *, file: str, label: str, precision: str, int8: bool,
                     build: Callable[[Path, Transformer, int], StaticRunner], cache_io: Callable[[int], list[str]],
                     overwrite: bool, log, **meta) -> ExportReport:
    model, _ = load_float_model(run)
    chunk = prefill_chunk(model.cfg.context)
    with runs.staged_dir(out, overwrite, ExportError) as folder:
        runner = build(folder, model, chunk)
        parity = static_lm_parity(model, runner, label, int8)
        log(parity.line())
        parity.check()
        report = lm_report(fmt, out, [out / file], parity, run, runner, folder, log)
        names = cache_io(model.cfg.n_layer)
        write_bundle_meta(folder, fmt, run, {"lm": file}, [parity], chunk=chunk, precision=precision,
                          inputs=["tokens", "input_pos", *names], outputs=["logits", *names],
                          figures=report.figures, **meta)
    log(f"wrote {out}: {file} {(out / file).stat().st_size:,} bytes")
    return report


@torch.no_grad()
def export_static_image(fmt: str, run: Path, out: Path, *, file: str, label: str, precision: str, int8: bool,
                        batch: int, build: Callable[[Path, torch.nn.Module, tuple], object], overwrite: bool,
                        log, **meta) -> ExportReport:
    gen, decoder = load_image_decoder(run)
    inputs = example_inputs(decoder, batch)
    with runs.staged_dir(out, overwrite, ExportError) as folder:
        got = build(folder, decoder, inputs)
        parity = image_parity(decoder(*inputs), got, f"{label} vs PyTorch, {batch} images",
                              LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE)
        log(parity.line())
        parity.check()
        write_bundle_meta(folder, fmt, run, {"generator": file}, [parity], batch=batch, precision=precision,
                          inputs=["z", "labels"][: len(inputs)], outputs=["images"], **meta, **image_meta(gen))
    log(f"wrote {out}: {file} {(out / file).stat().st_size:,} bytes")
    return ExportReport(fmt, out, [out / file], [parity])

