"""ExecuTorch export, lowered to the XNNPACK CPU backend (genlab.runtimes.executorch runs it).

The export is a folder (written all at once, after the parity check):

    LM run       model.pte, tokenizer.json, genlab-export.json
    GAN / VAE    generator.pte, genlab-export.json

``model.pte`` is ONE program with two methods, both exported with ``torch.export`` from ``StaticKVLM``
(the LM with a fixed-size KV cache, see static.py) and lowered together, so the program holds both:

    prefill  tokens (1, chunk) int64, input_pos (chunk,) int64, k.0, v.0, k.1, v.1, ...
             -> logits (1, chunk, vocab), k.0, v.0, k.1, v.1, ...
    decode   tokens (1, 1) int64, input_pos (1,) int64, k.0, v.0, ... -> logits (1, 1, vocab), k.0, v.0, ...

ExecuTorch methods take and return positional lists, in the order above. Each cache tensor is
layer i's keys (k) or values (v), (1, n_kv_head, context, head_dim) float32; each call returns the
caches with its own keys/values written at ``input_pos`` and the caller feeds them to the next call.
``chunk`` is in genlab-export.json. A prompt is fed in prefill chunks (the last one padded at the
end), then one token per decode call.

``generator.pte`` has one method, "forward", with a static batch (``batch`` in the meta):

    z (batch, latent_dim) float32 [, labels (batch,) int64] -> images (batch, channels, H, W) float32 in [0, 1]

Both are lowered with ``to_edge_transform_and_lower`` and ``XnnpackPartitioner``: every op XNNPACK
supports runs in its delegate, the rest (embedding lookup, the comparisons that build the mask) in
ExecuTorch's portable kernels.

``int8=True`` uses the PT2E flow (torchao's prepare_pt2e / convert_pt2e with ExecuTorch's
``XNNPACKQuantizer``), per-channel symmetric int8 weights:

- LM: dynamic quantization of the linear layers (activations quantized per call from their own
  range, so no calibration data is needed); attention, norms, embedding and caches stay fp32.
- GAN / VAE: static quantization of the linear and (transposed) convolution layers, activations
  with fixed scales calibrated on a few batches of random latents (the inputs the model is made
  for: z ~ N(0, 1), labels cycling through the classes).
"""


from __future__ import annotations

import copy
from pathlib import Path

import torch

from genlab import runs
from genlab.export.common import Exporter, ExportError, ExportReport, require
from genlab.export.edge import export_static_image, export_static_lm
from genlab.export.image import example_inputs
from genlab.quiet import quiet
from genlab.runtimes.executorch import IMAGE_METHOD, LM_METHODS, ExecutorchRunner, run_image_program
from genlab.runtimes.static import StaticKVLM, cache_names

LM_FILE = "model.pte"
IMAGE_FILE = "generator.pte"
IMAGE_BATCH = 4  # the image method's static batch: an app asks for several samples at once
CALIBRATION_BATCHES = 8  # static int8 (images): batches of random latents that fix the activation scales
_LOGGERS = ("executorch", "torch.export", "torchao")  # lowering warns at length; not the user's concern


def _require() -> None:
    require("executorch", "edge", "ExecuTorch export")
    require("executorch.runtime", "edge", "running an ExecuTorch program")


# ---- building a program -------------------------------------------------------------------------

def _capture(module: torch.nn.Module, inputs: tuple, quantize: str | None = None,
             calibration: list[tuple] | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` a module; with ``quantize`` ("dynamic" or "static"), run it through PT2E int8
    quantization for XNNPACK (calibrated on ``calibration``, or on ``inputs``) and export the result."""
    program = torch.export.export(module, inputs, strict=False)
    if quantize is None:
        return program
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=quantize == "dynamic"))
    prepared = prepare_pt2e(program.module(), quantizer)
    # Dynamic int8 needs no calibration, but a call lets the weight observers see the weights.
    for sample in calibration or [inputs]:
        prepared(*sample)
    return torch.export.export(convert_pt2e(prepared), inputs, strict=False)


def _affine_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose batch norms without affine parameters get the identity ones
    (gain 1, bias 0): the same function, but XNNPACK's batch-norm pass in ExecuTorch 1.5 names the
    constants it makes after the gain, so several gain-less norms (the GAN's class-conditional ones)
    collide and all get the first one's channel count."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.affine:
            m.weight = torch.nn.Parameter(torch.ones(m.num_features))
            m.bias = torch.nn.Parameter(torch.zeros(m.num_features))
            m.affine = True
    return module


def _lower(programs: dict[str, torch.export.ExportedProgram], path: Path) -> None:
    """Lower the exported methods into one .pte program with XNNPACK delegates."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import (
        get_xnnpack_edge_compile_config,
        get_xnnpack_executorch_backend_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()],
                                       compile_config=get_xnnpack_edge_compile_config())
    program = edge.to_executorch(get_xnnpack_executorch_backend_config())
    path.write_bytes(program.buffer)


# ---- export -----------------------------------------------------------------------------------

def export_executorch(run: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False,
                      log=print) -> ExportReport:
    """Export an LM, GAN or VAE run to the ExecuTorch folder ``out`` (layout in the module docstring).

    ``int8``: PT2E int8 for XNNPACK, dynamic (linear layers) for LMs, static with calibration on
    random latents for image models. The parity check runs before ``out`` is put in place; on
    failure nothing is written."""
    _require()
    run, out = Path(run), Path(out)
    family = runs.read_config(run).get("family")
    label, precision = f"ExecuTorch{' int8' if int8 else ''}", "int8" if int8 else "fp32"
    if family == "lm":
        def build_lm(folder: Path, model, chunk: int) -> ExecutorchRunner:
            static = StaticKVLM(model).eval()
            log(f"exporting prefill ({chunk} tokens) and decode (1 token)"
                f"{' with dynamic int8 linears' if int8 else ''}, lowering to XNNPACK")
            with quiet(*_LOGGERS):
                programs = {name: _capture(static, static.example_inputs(n), "dynamic" if int8 else None)
                            for name, n in zip(LM_METHODS, (chunk, 1), strict=True)}
                _lower(programs, folder / LM_FILE)
            return ExecutorchRunner(folder / LM_FILE, model.cfg, chunk)

        return export_static_lm("executorch", run, out, file=LM_FILE, label=label, precision=precision, int8=int8,
                                build=build_lm, cache_io=cache_names, overwrite=overwrite, log=log,
                                methods=list(LM_METHODS))
    if family not in ("gan", "vae"):
        raise ExportError(f"ExecuTorch export supports LM, GAN and VAE runs; '{run}' is a {family} run")

    def build_image(folder: Path, decoder, inputs: tuple) -> torch.Tensor:
        # Calibration draws other latents than the parity check's (seed 0), so parity is measured on unseen inputs.
        calibration = [example_inputs(decoder, IMAGE_BATCH, seed=s) for s in range(1, 1 + CALIBRATION_BATCHES)]
        log(f"exporting the {'generator' if family == 'gan' else 'decoder'} of the {family.upper()} run "
            f"(batch {IMAGE_BATCH}){' with static int8' if int8 else ''}, lowering to XNNPACK")
        with quiet(*_LOGGERS):
            program = _capture(_affine_batch_norms(decoder), inputs, "static" if int8 else None, calibration)
            _lower({IMAGE_METHOD: program}, folder / IMAGE_FILE)
        return run_image_program(folder / IMAGE_FILE, *inputs)

    return export_static_image("executorch", run, out, file=IMAGE_FILE, label=label, precision=precision, int8=int8,
                               batch=IMAGE_BATCH, build=build_image, overwrite=overwrite, log=log,
                               methods=[IMAGE_METHOD])


EXPORTER = Exporter(
    name="executorch", summary="folder with one .pte lowered to XNNPACK (LM prefill/decode, or image generator)",
    families=("lm", "gan", "vae"), options=("int8",),
    default_name=lambda run, opts: f"{run.name}-executorch{'-int8' if opts.int8 else ''}",
    export=lambda run, out, opts, overwrite, log: export_executorch(run, out, int8=opts.int8, overwrite=overwrite,
                                                                    log=log))
