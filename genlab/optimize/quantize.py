"""Post-training quantization of a language model into a normal run directory.

The format, the arithmetic and the modules that run quantized weights are in
``genlab.models.quantized`` (every runtime that opens runs needs them); this module makes quantized
runs from float ones.

Why not torchao: torchao 0.18 installs beside torch 2.13 and its weight-only configs run on CPU,
but its int4 CPU layouts keep one value per int8 byte or use a kernel-specific packing, and its
tensor subclasses have no plain safetensors form. Its dynamic int8 path runs through ``torch._int_mm``,
which is several times slower than fp32 on CPU here, while ``torch.ao``'s fbgemm kernels are faster.
So the format and the weight-only modules are ours (a few lines of arithmetic), and dynamic int8 uses
PyTorch's ``torch.ao.nn.quantized.dynamic.Linear``.
"""


from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from genlab import runs
from genlab.config import write_json
from genlab.errors import ConfigError, RunError
from genlab.models.quantized import (  # noqa: F401  (re-exported: the quantization API in one place)
    METHODS,
    DynamicInt8Linear,
    QuantEmbedding,
    QuantLinear,
    QuantSpec,
    check_shapes,
    dequantize,
    dequantized,
    finish_load,
    linear_names,
    pack_int4,
    prepare_for_load,
    quantize_int4,
    quantize_int8,
    replace_module,
    unpack_int4,
)
from genlab.models.transformer import LMConfig, Transformer


def quantize_model(model: Transformer, spec: QuantSpec) -> Transformer:
    """Replace the embedding and linear layers of ``model`` (in place) with quantized ones."""
    spec.validate()
    check_shapes(model.cfg, spec)
    tied = model.cfg.tie_embeddings
    emb = QuantEmbedding(model.cfg.vocab_size, model.cfg.d_model, spec)
    emb.set_from(model.embed.weight, spec)
    for name in linear_names(model):
        lin: nn.Linear = model.get_submodule(name)
        q = QuantLinear(lin.out_features, lin.in_features, spec)
        if name == "lm_head" and tied:
            q.share(emb)
        else:
            q.set_from(lin.weight, spec)
        replace_module(model, name, q)
    model.embed = emb
    return model


# ---- a quantized run ------------------------------------------------------------------------------

def quantize_run(run: str | Path, out: str | Path, spec: QuantSpec, overwrite: bool = False) -> dict:
    """Write a quantized copy of the LM run ``run`` to ``out``; returns a summary with file sizes."""
    spec.validate()
    run, out = Path(run), Path(out)
    cfg = runs.read_config(run, family="lm")
    if cfg.get("quantization"):
        raise RunError(f"run '{run}' is already quantized ({cfg['quantization'].get('method')}); "
                       f"quantize the original float run instead")
    if out.resolve() == run.resolve():
        raise ConfigError("--out must differ from the source run")
    model = Transformer(LMConfig.from_dict(cfg["model"]))
    check_shapes(model.cfg, spec)
    meta = runs.load_weights(run, model)
    quantize_model(model, spec)
    new_cfg = dict(cfg)
    new_cfg["quantization"] = {**spec.to_dict(), "source_run": str(run), "source_step": meta.get("step")}
    with runs.staged_dir(out, overwrite) as tmp:
        write_json(tmp / runs.CONFIG, new_cfg)
        if (run / runs.TOKENIZER).exists():
            shutil.copyfile(run / runs.TOKENIZER, tmp / runs.TOKENIZER)
        runs.save_weights(tmp, model, {"family": "lm", "quantization": spec.method, "step": meta.get("step", "")})
    src_bytes = (run / runs.WEIGHTS).stat().st_size
    out_bytes = (out / runs.WEIGHTS).stat().st_size
    return {"run": str(out), "method": spec.method, "bytes_before": src_bytes, "bytes_after": out_bytes,
            "ratio": src_bytes / out_bytes}
