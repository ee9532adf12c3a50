"""genlab run directories (float, quantized, or LoRA adapters over a base run) in PyTorch: the model
itself is the runner."""

from __future__ import annotations

from pathlib import Path

from genlab import runs
from genlab.data import tokenizer as tokmod
from genlab.device import pick_device
from genlab.errors import RunError
from genlab.models.quantized import dequantized, finish_load, prepare_for_load
from genlab.models.transformer import LMConfig, Transformer
from genlab.runtimes.base import Opened, read_json_config
from genlab.train import finetune

NAME = "pytorch"
ARTIFACT = "a genlab run directory (float, quantized or LoRA)"


def detect(path: Path) -> bool:
    if not (path / runs.CONFIG).is_file():
        return False
    cfg = read_json_config(path)
    # An unreadable config.json is a damaged run: opening it says so (runs.read_config).
    return cfg is None or "family" in cfg


def _build(run: Path, cfg: dict) -> Transformer:
    if finetune.lora_section(cfg):  # genlab finetune --method lora: the base run's weights + this run's adapters
        return finetune.lora_model(run, cfg).eval()
    model = Transformer(LMConfig.from_dict(cfg["model"]))
    if cfg.get("quantization"):  # integer weights + scales (genlab quantize): give the model their shapes first
        prepare_for_load(model, cfg["quantization"])
    runs.load_weights(run, model)
    return model.eval()


FAST_OPTION = True  # open_artifact takes ``fast`` (the registry passes it on)


def open_artifact(path: Path, device: str = "auto", fast: bool = True) -> Opened:
    """``fast`` (the default): the inference path — fused projections and, for int8/int4 runs on
    a CPU, genlab's own kernels (genlab.kernels). False: the plain model as trained, the
    reference that the fast path is checked against (same tokens; logits within float rounding)."""
    cfg = runs.read_config(path)
    if cfg["family"] != "lm":
        hint = {"music": f"`genlab generate music {path}`",
                "upscale": f"a super-resolution run: `genlab upscale {path} IN --out OUT`"}.get(
                    cfg["family"], f"images: `genlab generate image {path}`")
        raise RunError(f"run '{path}' holds a {cfg['family']} model, not a lm model ({hint})")
    quant = cfg.get("quantization")
    if quant and quant.get("method") == "dynamic-int8" and device == "auto":
        device = "cpu"  # PyTorch's dynamic int8 kernels are CPU kernels
    model = _build(path, cfg).to(pick_device(device))
    if quant:
        finish_load(model, quant, use_kernels=fast)
    if fast and isinstance(model, Transformer):  # (a LoRA run's model is peft's wrapper: left as it is)
        model.fuse_for_inference()
    tok = tokmod.load(path / runs.TOKENIZER)
    # Imported checkpoints may end documents with another token than genlab's own.
    eot = tok.token_to_id(cfg.get("eos_token") or tokmod.EOT)
    meta = {k: cfg[k] for k in ("data", "eos_token", "source", "chat_template", "finetune") if cfg.get(k) is not None}
    return Opened(model, tok, eot, path, NAME, quant["method"] if quant else "fp32", meta)


def load_float_model(run: str | Path) -> tuple[Transformer, dict]:
    """A run's model as plain float weights on the CPU (dequantized when the run is quantized) and
    its config: what exporters convert and what parity is measured against. A LoRA run's adapters are
    merged into its base's weights."""
    run = Path(run)
    cfg = runs.read_config(run, family="lm")
    if finetune.lora_section(cfg):
        return finetune.merged_model(run, cfg), cfg
    model = _build(run, cfg)
    return (dequantized(model) if cfg.get("quantization") else model), cfg
