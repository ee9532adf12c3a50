"""ExecuTorch export (lowered to the XNNPACK CPU backend), and the runner behind ``genlab.load(FOLDER)``
for such an export (run by ExecuTorch's own Python runtime).

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
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from genlab import runs
from genlab.errors import RunError
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

LM_FILE = "model.pte"
IMAGE_FILE = "generator.pte"
METHODS = ("prefill", "decode")
IMAGE_METHOD = "forward"
IMAGE_BATCH = 4  # the image method's static batch: an app asks for several samples at once
CALIBRATION_BATCHES = 8  # static int8 (images): batches of random latents that fix the activation scales

# fp32 program vs the same static graph in fp32 PyTorch: XNNPACK sums in another order, nothing more.
TOLERANCE = 1e-4
# int8 is compared with the float graph, so the difference is the quantization error, bounded
# relative to the size of the logits as for onnx --int8.
INT8_RELATIVE_TOLERANCE = 0.05


def _require() -> None:
    require("executorch", "edge", "ExecuTorch export")
    require("executorch.runtime", "edge", "running an ExecuTorch program")


@contextmanager
def _quiet():
    """Lowering warns at length (deprecations, ops it leaves to portable kernels): not the user's concern."""
    loggers = [logging.getLogger(name) for name in ("executorch", "torch.export", "torchao")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


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


def _load_program(path: Path):
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(Path(path))
    except Exception as e:  # the runtime raises RuntimeError/ValueError with long native messages
        raise RunError(f"{path} is not a loadable ExecuTorch program ({str(e).splitlines()[0][:120]})") from None


# ---- running an export ------------------------------------------------------------------------

class ExecutorchRunner(StaticRunner):
    """The LM program run by ExecuTorch's runtime: ``run`` calls its "prefill" or "decode" method."""

    def __init__(self, path: str | Path, cfg: LMConfig, chunk: int) -> None:
        super().__init__(cfg, chunk)
        self.path = Path(path)
        self.program = _load_program(self.path)
        missing = [m for m in METHODS if m not in self.program.method_names]
        if missing:
            raise RunError(f"{self.path} lacks the method(s) {', '.join(missing)} of a genlab LM export")
        # Load both now: the program caches them, and a bad program fails here rather than mid-generation.
        self.methods = {name: self.program.load_method(name) for name in METHODS}

    def run(self, which, tokens, input_pos, caches):
        inputs = [torch.from_numpy(np.ascontiguousarray(tokens, np.int64)),
                  torch.from_numpy(np.ascontiguousarray(input_pos, np.int64)),
                  *(torch.from_numpy(c) for c in caches)]
        # The runtime copies outputs out of its (shared) arenas on every call, so they are ours to keep.
        logits, *new = self.methods[which].execute(inputs)
        return logits.numpy(), [c.numpy() for c in new]


def load_bundle_runner(folder: Path, meta: dict) -> ExecutorchRunner:
    """The runner of an export folder (``genlab.load(FOLDER)`` builds its ``LanguageModel`` on it)."""
    _require()
    path = Path(folder) / meta["files"]["lm"]
    if not path.is_file():
        raise RunError(f"'{path}' is missing from the export folder")
    return ExecutorchRunner(path, LMConfig.from_dict(meta["model"]), int(meta["chunk"]))


def run_image_program(path: str | Path, *inputs: torch.Tensor) -> torch.Tensor:
    """Images from a ``generator.pte``, for the inputs described in the module docstring."""
    _require()
    method = _load_program(Path(path)).load_method(IMAGE_METHOD)
    return method.execute(list(inputs))[0]


# ---- parity -----------------------------------------------------------------------------------

def lm_parity(model: Transformer, runner: StaticRunner, int8: bool = False, steps: int = 8) -> Parity:
    """The export against the same static graph in PyTorch: a prefill longer than one chunk (so a
    padded chunk and a cache carried between prefill calls are covered), then decode steps."""
    return logit_parity(EagerStaticRunner(model, runner.chunk), runner, model.cfg.vocab_size, model.cfg.context,
                        f"ExecuTorch{' int8' if int8 else ''}", runner.chunk + runner.chunk // 4, steps, TOLERANCE,
                        INT8_RELATIVE_TOLERANCE if int8 else None, detail=f" (chunks of {runner.chunk})")


# ---- export -----------------------------------------------------------------------------------

@torch.no_grad()
def export_executorch(run: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False,
                      log=print) -> list[Parity]:
    """Export an LM, GAN or VAE run to the ExecuTorch folder ``out`` (layout in the module docstring).

    ``int8``: PT2E int8 for XNNPACK, dynamic (linear layers) for LMs, static with calibration on
    random latents for image models. The parity check runs before ``out`` is put in place; on
    failure nothing is written."""
    _require()
    run, out = Path(run), Path(out)
    family = runs.read_config(run).get("family")
    if family == "lm":
        return _export_lm(run, out, int8, overwrite, log)
    if family in ("gan", "vae"):
        return _export_image(run, out, family, int8, overwrite, log)
    raise ExportError(f"ExecuTorch export supports LM, GAN and VAE runs; '{run}' is a {family} run")


def _export_lm(run: Path, out: Path, int8: bool, overwrite: bool, log) -> list[Parity]:
    from genlab.optimize.quantize import load_float_model

    model, cfg = load_float_model(run)
    chunk = prefill_chunk(model.cfg.context)
    static = StaticKVLM(model).eval()
    with staged_dir(out, overwrite) as folder:
        log(f"exporting prefill ({chunk} tokens) and decode (1 token){' with dynamic int8 linears' if int8 else ''}, "
            f"lowering to XNNPACK")
        with _quiet():
            programs = {name: _capture(static, static.example_inputs(n), "dynamic" if int8 else None)
                        for name, n in zip(METHODS, (chunk, 1), strict=True)}
            _lower(programs, folder / LM_FILE)
        runner = ExecutorchRunner(folder / LM_FILE, model.cfg, chunk)
        parity = lm_parity(model, runner, int8=int8)
        log(parity.line())
        parity.check()

        # The fuller figures, through the same sampling code as every genlab LM.
        figures, line = export_figures(run, runner_lm(runner, run / runs.TOKENIZER, cfg.get("eos_token"), folder))
        log(line)

        names = cache_names(model.cfg.n_layer)
        write_bundle_meta(folder, "executorch", run, {"lm": LM_FILE}, [parity], chunk=chunk,
                          precision="int8" if int8 else "fp32", methods=list(METHODS),
                          inputs=["tokens", "input_pos", *names], outputs=["logits", *names], figures=figures)
    log(f"wrote {out}: {LM_FILE} {(out / LM_FILE).stat().st_size:,} bytes")
    return [parity]



def _export_image(run: Path, out: Path, family: str, int8: bool, overwrite: bool, log) -> list[Parity]:
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
    # Calibration draws other latents than the parity check's (seed 0), so parity is measured on unseen inputs.
    calibration = [example_inputs(decoder, IMAGE_BATCH, seed=s) for s in range(1, 1 + CALIBRATION_BATCHES)]
    with staged_dir(out, overwrite) as folder:
        log(f"exporting the {'generator' if family == 'gan' else 'decoder'} of the {family.upper()} run (batch {IMAGE_BATCH})"
            f"{' with static int8' if int8 else ''}, lowering to XNNPACK")
        with _quiet():
            program = _capture(_affine_batch_norms(decoder), inputs, "static" if int8 else None, calibration)
            _lower({IMAGE_METHOD: program}, folder / IMAGE_FILE)
        got = run_image_program(folder / IMAGE_FILE, *inputs)
        what = f"ExecuTorch{' int8' if int8 else ''} vs PyTorch, {IMAGE_BATCH} images"
        parity = image_parity(decoder(*inputs), got, what, LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE)
        log(parity.line())
        parity.check()
        inputs_meta = ["z", "labels"] if decoder.conditional else ["z"]
        write_bundle_meta(folder, "executorch", run, {"generator": IMAGE_FILE}, [parity], batch=IMAGE_BATCH,
                          precision="int8" if int8 else "fp32", methods=[IMAGE_METHOD], inputs=inputs_meta,
                          outputs=["images"], **image_meta(gen))
    log(f"wrote {out}: {IMAGE_FILE} {(out / IMAGE_FILE).stat().st_size:,} bytes")
    return [parity]
