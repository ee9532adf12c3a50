"""Core ML export: ML Program packages (``.mlpackage``) for Apple devices, made for the Neural Engine.

``genlab export RUN --format coreml --out DIR`` writes a folder:

    model.mlpackage       LM: one multifunction package, functions "prefill" and "decode" sharing one
                          copy of the weights (minimum deployment target iOS 18 / macOS 15)
    generator.mlpackage   GAN / VAE: latent (+ labels) -> images (iOS 17 / macOS 14)
    tokenizer.json        LMs
    genlab-export.json    what the files are, the model config, and what was verified on export

The LM is ``genlab.runtimes.static.StaticKVLM``: a fixed-size KV cache passed in and returned, so
both functions have static shapes (the Neural Engine compiles static shapes only):

    prefill  tokens (1, chunk) int32, input_pos (chunk,) int32, k_0, v_0, ... k_{L-1}, v_{L-1}
             -> logits (1, chunk, vocab) fp16, k_0_out, v_0_out, ...
    decode   tokens (1, 1) int32, input_pos (1,) int32, k_0, v_0, ... -> logits (1, 1, vocab), k_0_out, ...

Each cache is (1, n_kv_head, context, head_dim) fp16; an app feeds each step the caches the
previous step returned (``k_0_out`` becomes the next ``k_0``). chunk is ``prefill_chunk(context)``
(recorded as "chunk" in genlab-export.json); a shorter prompt is padded at the end, exactly as
``StaticRunner`` does. Core ML names may not contain dots, so the static graph's ``k.0`` is ``k_0``.

With ``stateful=True`` the caches are Core ML state instead (``ct.StateType`` k_0, v_0, ..., fp16):
both functions take only tokens and input_pos, return only logits, and update the state in place
(``state = model.make_state()``, then ``model.predict(feed, state=state)``), so no cache is copied
in or out per token.

The generator has a static batch (1, recorded as "batch"): z (1, latent_dim) fp32, and for
conditional models labels (1,) int32 -> images (1, channels, size, size) fp32 in [0, 1].

Every package is converted from a ``torch.export`` program with ``compute_precision=FLOAT16``
(weights and activations fp16, what the Neural Engine runs) and is meant to be loaded with
``compute_units=ComputeUnit.ALL``. ``compress`` shrinks the weights after conversion:
"palettize4" / "palettize6" (k-means look-up tables of 16 / 64 values per tensor) or "int8"
(linear symmetric per-channel int8); Core ML expands them on load or on the fly.

Core ML cannot run predictions on Linux, so the export verifies what it can read back: the
functions, the names, shapes and dtypes of every input and output, the program's operations
(one ``linear`` per projection, the constexpr ops compression must produce) and the weights' size.
Numeric parity against PyTorch needs a Mac: ``macos_parity(folder)`` or ``MACOS_SNIPPET``.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genlab import runs
from genlab.export.common import (
    Exporter,
    ExportError,
    ExportReport,
    Parity,
    logit_parity,
    probe_tokens,
    require,
    write_bundle_meta,
)
from genlab.quiet import quiet
from genlab.runtimes.base import read_bundle_meta
from genlab.runtimes.coreml import LM_FUNCTIONS as FUNCTIONS
from genlab.runtimes.coreml import CoreMLRunner, core_names
from genlab.runtimes.pytorch import load_float_model
from genlab.runtimes.static import StaticKVLM, prefill_chunk

COMPRESS = ("palettize4", "palettize6", "int8")
LM_PACKAGE = "model.mlpackage"
GENERATOR_PACKAGE = "generator.mlpackage"
IMAGE_BATCH = 1
# The constexpr op each compression leaves in the program, by the op set the target uses
# (iOS 18 replaced constexpr_affine_dequantize with constexpr_blockwise_shift_scale).
COMPRESSED_OPS = {"iOS17": {"palettize": "constexpr_lut_to_dense", "int8": "constexpr_affine_dequantize"},
                  "iOS18": {"palettize": "constexpr_lut_to_dense", "int8": "constexpr_blockwise_shift_scale"}}
# Tolerances of the macOS comparison (fp16 end to end; compressed weights add their own error).
FP16_RELATIVE_TOLERANCE = 0.02
COMPRESSED_RELATIVE_TOLERANCE = 0.1
PARITY_NOTE = ("parity: Core ML does not run on Linux; run the snippet in docs/export.md on macOS to compare "
               "(genlab.export.coreml.macos_parity)")
NOT_CHECKED_OFF_MACOS = ("numeric parity against PyTorch: Core ML predicts only on macOS; checked here: the package's "
                         "functions, input/output/state names, shapes and dtypes, op counts, compression ops and "
                         "weight size (run macos_parity on a Mac for the numbers)")

MACOS_SNIPPET = '''\
# macOS only: Core ML predictions vs PyTorch for a genlab Core ML export.
from genlab.export.coreml import macos_parity
for p in macos_parity("out/tiny-coreml"):   # the source run is read from genlab-export.json
    print(p.line(), "ok" if p.ok else "TOO FAR")

# Or by hand: one decode step of the multifunction LM package.
import numpy as np, coremltools as ct
decode = ct.models.MLModel("out/tiny-coreml/model.mlpackage", function_name="decode",
                           compute_units=ct.ComputeUnit.ALL)
fn = next(f for f in decode.get_spec().description.functions if f.name == "decode")
feed = {i.name: np.zeros(tuple(i.type.multiArrayType.shape), np.float16) for i in fn.input[2:]}
feed.update(tokens=np.array([[42]], np.int32), input_pos=np.array([0], np.int32))
out = decode.predict(feed)   # out["logits"] (1, 1, vocab); out["k_0_out"] ... feed the next step
'''


# Where conversion and compression draw progress bars (module, its name for tqdm).
_PROGRESS_BARS = (("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
                  ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
                  ("coremltools.optimize.coreml._quantization_passes", "tqdm"))


@contextmanager
def _quiet():
    """coremltools is loud where our users can do nothing: unsupported scikit-learn and untested torch
    versions, the missing native predictor on Linux, progress bars for every conversion pass. Keep
    its warnings (and torchao's, which it imports) off the terminal; errors still come through."""
    patched = []
    with quiet("coremltools", "torchao", "torch.utils._pytree", "torch._export", "torch.export"):
        try:
            if "coremltools" in sys.modules:  # progress bars: swap the tqdm references conversion uses
                import importlib

                for name, attr in _PROGRESS_BARS:
                    mod = importlib.import_module(name)
                    if hasattr(mod, attr):
                        patched.append((mod, attr, getattr(mod, attr)))
                        setattr(mod, attr, lambda it, *a, **k: it)
            yield
        finally:
            for mod, attr, old in patched:
                setattr(mod, attr, old)


def import_coremltools():
    with _quiet():
        return require("coremltools", "edge", "Core ML export")


def _compression(compress: str | None):
    """The coremltools optimizer and its config for ``compress`` (None: no compression)."""
    if compress is None:
        return None
    if compress not in COMPRESS:
        raise ExportError(f"unknown Core ML compression '{compress}'; choose one of: {', '.join(COMPRESS)} "
                          f"(or none for plain fp16)")
    import coremltools.optimize.coreml as cto

    if compress == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        return cto.linear_quantize_weights, cto.OptimizationConfig(global_config=op)
    op = cto.OpPalettizerConfig(nbits=int(compress[-1]), mode="kmeans")
    return cto.palettize_weights, cto.OptimizationConfig(global_config=op)


def _convert(ct, module: torch.nn.Module, example: tuple, inputs: list, outputs: list, target: str,
             compress: str | None, states: list | None = None):
    """torch.export the module, convert it to an fp16 ML Program, and compress its weights."""
    with _quiet():
        # torch.export rather than jit.trace: coremltools' TorchScript frontend cannot lower the
        # int() casts tracing records for the attention's shapes; the exported ATen graph has none.
        program = torch.export.export(module, example).run_decompositions({})
        model = ct.convert(program, inputs=inputs, outputs=outputs, states=states or None, convert_to="mlprogram",
                           minimum_deployment_target=getattr(ct.target, target),
                           compute_units=ct.ComputeUnit.ALL, compute_precision=ct.precision.FLOAT16)
        step = _compression(compress)
        if step is not None:
            optimize, config = step
            model = optimize(model, config)
    return model


# ---- reading a package back: what is verified on Linux -------------------------------------------

_DTYPES = {65568: "fp32", 65552: "fp16", 131104: "int32"}  # ArrayFeatureType.ArrayDataType values


def _features(features) -> dict[str, list]:
    out = {}
    for f in features:
        arr = f.type.stateType.arrayType if f.type.HasField("stateType") else f.type.multiArrayType
        out[f.name] = [list(arr.shape), _DTYPES.get(arr.dataType, str(arr.dataType))]
    return out


def describe_package(path: Path) -> dict:
    """Functions of a saved .mlpackage: {name: {"inputs", "outputs", "states", "ops"}} from its spec alone
    (``skip_model_load``: nothing is compiled, so this works where Core ML does not run)."""
    import coremltools as ct

    with _quiet():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description
    if len(desc.functions):
        signatures = {f.name: (f.input, f.output, f.state) for f in desc.functions}
    else:
        signatures = {"main": (desc.input, desc.output, desc.state)}
    found = {}
    for name, (ins, outs, states) in signatures.items():
        fn = spec.mlProgram.functions[name]
        ops = Counter(op.type for op in fn.block_specializations[fn.opset].operations)
        found[name] = {"inputs": _features(ins), "outputs": _features(outs), "states": _features(states),
                       "ops": dict(sorted(ops.items()))}
    return found


def weights_bytes(path: Path) -> int:
    """Size of the package's weight blobs (all functions share them)."""
    return sum(f.stat().st_size for f in Path(path).rglob("weight*.bin"))


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _verify(path: Path, plan: dict, ops: dict[str, int], target: str, compress: str | None) -> dict:
    """Compare a saved package with its plan ({function: {"inputs", "outputs"}}) and check its ops:
    ``ops`` gives exact counts ({"linear": 15}), or 0 for "at least one"."""
    found = describe_package(path)
    if sorted(found) != sorted(plan):
        raise ExportError(f"{path.name}: functions {sorted(found)}, expected {sorted(plan)}")
    for fn, want in plan.items():
        got = found[fn]
        for side in ("inputs", "outputs", "states"):
            if got[side] != want[side]:
                raise ExportError(f"{path.name} [{fn}] {side} {got[side]} differ from the plan {want[side]}")
        for op, count in ops.items():
            n = got["ops"].get(op, 0)
            if n != count if count else not n:
                raise ExportError(f"{path.name} [{fn}]: {n} {op} ops, expected {count or 'some'}")
        if compress is not None:
            op = COMPRESSED_OPS[target]["int8" if compress == "int8" else "palettize"]
            if not got["ops"].get(op):
                raise ExportError(f"{path.name} [{fn}]: compression '{compress}' left no {op} op")
    return {"functions": found, "weights_bytes": weights_bytes(path), "package_bytes": package_bytes(path)}


# ---- the numeric proxy that does run here --------------------------------------------------------

def _fp16_weights(module: torch.nn.Module) -> torch.nn.Module:
    """A copy with every weight rounded to fp16 (activations stay fp32)."""
    import copy

    rounded = copy.deepcopy(module)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    return rounded


@torch.no_grad()
def _weight_rounding_proxy(module: torch.nn.Module, example: tuple) -> dict:
    """How far fp16 weight rounding alone moves the first output. Only a lower bound of the Core ML
    difference (fp16 activations and the Neural Engine's kernels add theirs): the real comparison
    runs on a Mac."""
    ref = module(*example)
    got = _fp16_weights(module)(*example)
    ref, got = (ref[0], got[0]) if isinstance(ref, tuple) else (ref, got)
    return {"what": "PyTorch with fp16-rounded weights (fp32 activations) vs PyTorch fp32; not Core ML",
            "max_abs_diff": (ref - got).abs().max().item(), "scale": ref.abs().max().item()}


# ---- export ----------------------------------------------------------------------------------------

def _lm_plan(cfg, chunk: int, stateful: bool) -> dict:
    cache = [[1, cfg.n_kv_head, cfg.context, cfg.head_dim], "fp16"]
    names = core_names(cfg.n_layer)
    plan = {}
    for fn, T in (("prefill", chunk), ("decode", 1)):
        plan[fn] = {"inputs": {"tokens": [[1, T], "int32"], "input_pos": [[T], "int32"]},
                    "outputs": {"logits": [[1, T, cfg.vocab_size], "fp16"]}, "states": {}}
        if stateful:
            plan[fn]["states"] = {n: cache for n in names}
        else:
            plan[fn]["inputs"].update({n: cache for n in names})
            plan[fn]["outputs"].update({f"{n}_out": cache for n in names})
    return plan


class StatefulKVLM(nn.Module):
    """``StaticKVLM`` with its caches as fp16 buffers that each call updates in place:
    ``forward(tokens, input_pos) -> logits``. torch.export records the in-place writes as buffer
    mutations, which coremltools turns into Core ML state (read_state / write_state), so an app
    keeps the cache inside Core ML instead of copying it in and out every token."""

    def __init__(self, static: StaticKVLM) -> None:
        super().__init__()
        self.static = static
        self.names = core_names(static.cfg.n_layer)
        for name, cache in zip(self.names, static.empty_caches(), strict=True):
            self.register_buffer(name, cache.half())  # Core ML state is fp16

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        caches = [getattr(self, n) for n in self.names]
        logits, *new = self.static(tokens, input_pos, *(c.float() for c in caches))
        for cache, x in zip(caches, new, strict=True):
            cache.copy_(x.half())
        return logits


def _export_lm(ct, run: Path, folder: Path, compress: str | None, stateful: bool, log) -> dict:
    model, _ = load_float_model(run)
    cfg = model.cfg
    static = StaticKVLM(model).eval()
    chunk = prefill_chunk(cfg.context)
    names = core_names(cfg.n_layer)
    plan = _lm_plan(cfg, chunk, stateful)
    target = "iOS18"  # multifunction packages and state need iOS 18 / macOS 15
    module = StatefulKVLM(static).eval() if stateful else static
    with tempfile.TemporaryDirectory(dir=folder.parent) as work:
        desc = ct.utils.MultiFunctionDescriptor()
        for fn, T in (("prefill", chunk), ("decode", 1)):
            example = static.example_inputs(T)
            caches = [ct.TensorType(n, shape=tuple(c.shape), dtype=np.float16)
                      for n, c in zip(names, example[2:], strict=True)]
            inputs = [ct.TensorType("tokens", shape=(1, T), dtype=np.int32),
                      ct.TensorType("input_pos", shape=(T,), dtype=np.int32)]
            outputs = [ct.TensorType("logits", dtype=np.float16)]
            states = []
            if stateful:
                example = example[:2]
                states = [ct.StateType(wrapped_type=ct.TensorType(shape=c.shape, dtype=np.float16), name=c.name)
                          for c in caches]
            else:
                inputs += caches
                outputs += [ct.TensorType(f"{n}_out", dtype=np.float16) for n in names]
            log(f"converting {fn} ({T} token{'s' if T > 1 else ''}) to an fp16 ML Program"
                f"{', ' + compress if compress else ''}")
            single = Path(work) / f"{fn}.mlpackage"
            with _quiet():
                _convert(ct, module, example, inputs, outputs, target, compress, states).save(str(single))
            desc.add_function(str(single), "main", fn)
        # One package, two functions: save_multifunction stores identical weights once, so prefill
        # and decode share them (compression is deterministic, so compressed weights match too).
        desc.default_function_name = "decode"
        with _quiet():
            ct.utils.save_multifunction(desc, str(folder / LM_PACKAGE))
    # q, k, v, o and the three MLP projections per layer, and the LM head: every one a linear op
    # (a matmul of two activations would be a projection the Neural Engine cannot keep resident).
    ops = {"linear": 7 * cfg.n_layer + 1}
    if stateful:
        ops["write_state"] = 2 * cfg.n_layer  # every cache written back once per call
    verified = _verify(folder / LM_PACKAGE, plan, ops, target, compress)
    if compress is None:
        verified["fp16_weight_proxy"] = _weight_rounding_proxy(static, (probe_tokens(cfg.vocab_size, chunk),
                                                                        *static.example_inputs(chunk)[1:]))
    write_bundle_meta(folder, "coreml", run, {"lm": LM_PACKAGE}, [], precision="fp16", compress=compress,
                      chunk=chunk, functions=list(FUNCTIONS), default_function="decode",
                      minimum_deployment_target=target, compute_units="ALL", stateful=stateful,
                      inputs=["tokens", "input_pos", *([] if stateful else names)],
                      outputs=["logits", *([] if stateful else [f"{n}_out" for n in names])],
                      states=names if stateful else [], verified=verified)
    return verified


def _export_image(ct, run: Path, folder: Path, compress: str | None, log) -> dict:
    from genlab.export.image import example_inputs, image_meta, load_image_decoder

    gen, decoder = load_image_decoder(run)
    example = example_inputs(decoder, batch=IMAGE_BATCH)
    cfg = gen.model.cfg
    target = "iOS17"
    inputs = [ct.TensorType("z", shape=tuple(example[0].shape), dtype=np.float32)]
    plan_in = {"z": [list(example[0].shape), "fp32"]}
    if decoder.conditional:
        inputs.append(ct.TensorType("labels", shape=(IMAGE_BATCH,), dtype=np.int32))
        plan_in["labels"] = [[IMAGE_BATCH], "int32"]
    shape = [IMAGE_BATCH, cfg.channels, cfg.image_size, cfg.image_size]
    plan = {"main": {"inputs": plan_in, "outputs": {"images": [shape, "fp32"]}, "states": {}}}
    log(f"converting the {gen.family} generator (batch {IMAGE_BATCH}) to an fp16 ML Program"
        f"{', ' + compress if compress else ''}")
    model = _convert(ct, decoder, example, inputs, [ct.TensorType("images", dtype=np.float32)], target, compress)
    with _quiet():
        model.save(str(folder / GENERATOR_PACKAGE))
    verified = _verify(folder / GENERATOR_PACKAGE, plan, {"conv": 0}, target, compress)
    if compress is None:
        verified["fp16_weight_proxy"] = _weight_rounding_proxy(decoder, example)
    write_bundle_meta(folder, "coreml", run, {"generator": GENERATOR_PACKAGE}, [], precision="fp16",
                      compress=compress, batch=IMAGE_BATCH, minimum_deployment_target=target, compute_units="ALL",
                      inputs=list(plan_in), outputs=["images"], verified=verified, **image_meta(gen))
    return verified


def export_coreml(run: str | Path, out: str | Path, *, compress: str | None = None, stateful: bool = False,
                  overwrite: bool = False, log=print) -> ExportReport:
    """Export ``run`` (an LM, GAN or VAE) to the Core ML folder ``out``. The report has no parity
    figures off macOS (Core ML predicts on macOS only, see ``macos_parity``) and says so in
    ``unchecked``; what is checked here is the program read back."""
    ct = import_coremltools()
    _compression(compress)  # an unknown value fails before anything is written
    run, out = Path(run), Path(out)
    family = runs.read_config(run)["family"]
    if family not in ("lm", "gan", "vae"):
        raise ExportError(f"Core ML export supports lm, gan and vae runs, not {family}")
    if stateful and family != "lm":
        raise ExportError("--stateful applies to language models (their KV cache); image models have no state")
    with runs.staged_dir(out, overwrite, ExportError) as folder:
        if family == "lm":
            verified = _export_lm(ct, run, folder, compress, stateful, log)
            package = LM_PACKAGE
        else:
            verified = _export_image(ct, run, folder, compress, log)
            package = GENERATOR_PACKAGE
        for fn, info in verified["functions"].items():
            ops = info["ops"]
            notable = {k: v for k, v in ops.items() if k in ("linear", "matmul", "conv", "conv_transpose",
                                                              "scaled_dot_product_attention", "softmax",
                                                              "read_state", "write_state")
                       or k.startswith("constexpr")}
            log(f"{package} [{fn}]: {sum(ops.values())} ops ({', '.join(f'{k} {v}' for k, v in notable.items())})")
        log(f"{package}: weights {verified['weights_bytes']:,} B, package {verified['package_bytes']:,} B")
        proxy = verified.get("fp16_weight_proxy")
        if proxy:
            log(f"fp16 weight rounding in PyTorch (not Core ML): max |diff| {proxy['max_abs_diff']:.3g} "
                f"(outputs up to {proxy['scale']:.3g})")
        checks: list[Parity] = []
        if sys.platform == "darwin":  # Core ML predicts here: measure the numbers before the folder is in place
            checks = macos_parity(folder, run)
            for p in checks:
                log(p.line())
                p.check()
    if not checks:
        log(PARITY_NOTE)
    return ExportReport("coreml", out, [out / package], checks, unchecked=[] if checks else [NOT_CHECKED_OFF_MACOS])


# ---- macOS: run the export and compare with PyTorch ----------------------------------------------

def _stateful_parity(path: Path, model, ids: torch.Tensor, rel: float) -> Parity:
    """A stateful package: every token through "decode" with one Core ML state, vs one PyTorch pass."""
    import coremltools as ct

    decode = ct.models.MLModel(str(path), function_name="decode", compute_units=ct.ComputeUnit.ALL)
    state = decode.make_state()
    got = [decode.predict({"tokens": np.array([[t]], np.int32), "input_pos": np.array([i], np.int32)},
                          state=state)["logits"] for i, t in enumerate(ids[0].tolist())]
    ref = model(ids)
    got_t = torch.from_numpy(np.concatenate(got, axis=1).astype(np.float32))
    scale = ref.abs().max().item()
    what = f"Core ML (stateful decode) vs PyTorch, {ids.shape[1]} tokens one by one"
    return Parity(what, (ref - got_t).abs().max().item(), rel * scale, scale)


@torch.no_grad()
def macos_parity(folder: str | Path, run: str | Path | None = None, prompt: int = 16, steps: int = 8) -> list[Parity]:
    """Core ML predictions vs the PyTorch model for an export folder (macOS only). LM: a prefill of
    ``prompt`` tokens then ``steps`` decode steps; image models: one batch of images."""
    if sys.platform != "darwin":
        raise ExportError("Core ML predictions need macOS; on this system the export is conversion-only "
                          "(run macos_parity on a Mac)")
    folder = Path(folder)
    meta = read_bundle_meta(folder)
    if meta.get("format") != "coreml":
        raise ExportError(f"'{folder}' is a {meta.get('format')} export, not a Core ML one")
    run = Path(run or meta["source_run"])
    rel = COMPRESSED_RELATIVE_TOLERANCE if meta.get("compress") else FP16_RELATIVE_TOLERANCE
    if meta["family"] == "lm":
        model, _ = load_float_model(run)
        prompt = min(prompt, model.cfg.context - steps)
        ids = probe_tokens(model.cfg.vocab_size, prompt + steps, seed=1)
        if meta.get("stateful"):
            return [_stateful_parity(folder / meta["files"]["lm"], model, ids, rel)]
        coreml = CoreMLRunner(folder / meta["files"]["lm"], model.cfg, meta["chunk"])
        return [logit_parity(model, coreml, model.cfg.vocab_size, model.cfg.context, "Core ML", prompt, steps,
                             0.0, int8_relative=rel)]
    import coremltools as ct

    from genlab.export.image import (
        LOW_PRECISION_PIXEL_TOLERANCE,
        example_inputs,
        image_parity,
        load_image_decoder,
    )

    _, decoder = load_image_decoder(run)
    example = example_inputs(decoder, batch=meta["batch"])
    generator = ct.models.MLModel(str(folder / meta["files"]["generator"]), compute_units=ct.ComputeUnit.ALL)
    feed = {"z": example[0].numpy()}
    if decoder.conditional:
        feed["labels"] = example[1].numpy().astype(np.int32)
    got = generator.predict(feed)["images"]
    tolerance = LOW_PRECISION_PIXEL_TOLERANCE * (2 if meta.get("compress") else 1)
    return [image_parity(decoder(*example), got, f"Core ML vs PyTorch, {meta['batch']} image(s)", tolerance)]



def _default_name(run: Path, opts) -> str:
    return f"{run.name}-coreml{'-' + opts.compress if opts.compress else ''}"


EXPORTER = Exporter(
    name="coreml", summary="Core ML folder with an fp16 .mlpackage for Apple devices (structure checked on Linux; "
                           "numeric parity needs macOS)",
    families=("lm", "gan", "vae"), options=("compress", "stateful"), default_name=_default_name,
    export=lambda run, out, opts, overwrite, log: export_coreml(run, out, compress=opts.compress,
                                                                stateful=opts.stateful, overwrite=overwrite, log=log))
