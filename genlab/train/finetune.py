"""Fine-tuning an LM run on new text: LoRA adapters (through peft) or every weight.

``--method full`` is `genlab train lm --init-from BASE`: the new run holds a whole model.

``--method lora`` freezes the base and trains low-rank adapters on the chosen projections
(Hu et al., 2021): ``W x + (alpha / r) * B A x``, ``A`` (r x in) random, ``B`` (out x r) zero at the
start, so step 0 is the base model. ``--method qlora`` does the same over a base whose embedding and
linear layers are quantized to int4 (or int8) with genlab's own weight-only layers
(``models.quantized``; Dettmers et al., 2023, with round-to-nearest instead of NF4): the frozen base
takes 4-8x less memory, and its weights are dequantized layer by layer in the forward and again in
the backward pass (never kept as floats for autograd). peft builds the adapter layers inside genlab's own
``Transformer``; the task is an ``LMTask``, so the shared trainer gives budgets, progress, evals,
checkpoints, Ctrl-C and exact resume. The run stores only the adapters:

    runs/NAME/
      config.json          the base's model section, plus ``finetune``: method, rank, alpha, dropout,
                           targets, the base run (absolute path) and its weights' sha256, and for
                           qlora the ``quantization`` of the base (method, group size)
      adapter.safetensors  lora_A / lora_B of every adapted projection (step in the metadata)
      train_state.pt       optimizer (adapter parameters only), step, RNG states
      tokenizer.json       the base's

``adapter.safetensors`` and ``train_state.pt`` are committed like ``runs.save_checkpoint`` commits
model.safetensors and train_state.pt (temp files made durable, then the state renamed, then the
weights; a kill between the renames is rolled forward on the next load).

Opening the run (``runtimes.pytorch``) builds the base (quantized again for qlora: round-to-nearest
is deterministic), injects the adapters with the recorded settings and loads them; a base whose
weights changed since is refused. ``merge`` folds ``B A * alpha / r`` into the base weights and
writes an ordinary float run; for qlora into the dequantized base weights, the model the adapters
were trained with, so the merged run computes what the unmerged one does.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import genlab
from genlab import runs
from genlab.config import DataConfig, TrainConfig, write_json
from genlab.data import conversations as conv
from genlab.data import prepare as prep
from genlab.data import tokenizer as tokmod
from genlab.device import seed_everything
from genlab.errors import ConfigError, RunError
from genlab.models.quantized import QuantLinear, QuantSpec, check_shapes, dequantized
from genlab.models.transformer import LMConfig, Transformer
from genlab.quiet import quiet
from genlab.train.lm import ChatTask, LMTask, LMTrainSpec, train_lm
from genlab.train.trainer import TrainResult, begin, create_run, resumed_train_config, train

ADAPTER = "adapter.safetensors"
METHODS = ("lora", "qlora", "full")
ADAPTER_METHODS = ("lora", "qlora")
QLORA_QUANT = ("int4", "int8")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LR = {"lora": 1e-3, "qlora": 1e-3, "full": 2e-4}  # the CLI's --lr when none is given
_PEFT_NAME = "default"  # peft's adapter name inside the model; the file stores names without it


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"--lora-rank must be a whole number >= 1 (got {self.rank})")
        if not self.alpha > 0:
            raise ConfigError(f"--lora-alpha must be positive (got {self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1) (got {self.dropout})")
        if not self.targets:
            raise ConfigError(f"--lora-targets is empty; name some of: {', '.join(LORA_TARGETS)}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ConfigError(f"--lora-targets: the model has no module '{unknown[0]}'; "
                              f"choose from {', '.join(LORA_TARGETS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class FinetuneSpec:
    """Everything `genlab finetune` needs; the CLI only fills it in."""

    run: Path
    base: Path | None = None  # read from the run's config.json on --resume
    data: DataConfig = field(default_factory=DataConfig)
    method: str | None = None  # None: lora for a new run, the run's own method on --resume
    lora: LoraSettings = field(default_factory=LoraSettings)
    quant: QuantSpec = field(default_factory=lambda: QuantSpec("int4", 32))  # qlora's frozen base
    train: TrainConfig | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def validate(self) -> None:
        method = self.method or "lora"
        if method not in METHODS:
            raise ConfigError(f"unknown --method '{self.method}'; choose lora, qlora or full")
        if method in ADAPTER_METHODS:
            self.lora.validate()
        if method == "qlora":
            if self.quant.method not in QLORA_QUANT:
                raise ConfigError(f"--quant must be int4 or int8 for qlora (got {self.quant.method})")
            self.quant.validate()


# ---- the base run and the adapters -----------------------------------------------------------------


def lora_section(cfg: dict) -> dict | None:
    """The ``finetune`` section of a LoRA or QLoRA run's config, or None for any other run."""
    sec = cfg.get("finetune")
    return sec if isinstance(sec, dict) and sec.get("method") in ADAPTER_METHODS else None


def weights_sha256(run: Path) -> str:
    return runs.file_sha256(Path(run) / runs.WEIGHTS)


def base_config(base: Path) -> dict:
    """config.json of a run that can be fine-tuned: a float LM run with its weights."""
    base = Path(base)
    cfg = runs.read_config(base)
    if cfg["family"] != "lm":
        raise RunError(f"base '{base}' holds a {cfg['family']} model; finetune needs a language-model run")
    if cfg.get("quantization"):
        raise RunError(f"base '{base}' is quantized; fine-tune the float run it was made from")
    if lora_section(cfg):
        raise RunError(f"base '{base}' is itself a LoRA run; merge it first "
                       f"(`genlab finetune --merge {base} --out MERGED`) and fine-tune the merged run")
    if not (base / runs.WEIGHTS).is_file():
        raise RunError(f"base '{base}' has no {runs.WEIGHTS}; it has not saved a checkpoint yet")
    return cfg


def check_base(run: Path, sec: dict) -> Path:
    """The base run of LoRA run ``run``, refused when it is gone or its weights changed."""
    base = Path(sec["base"])
    if not (base / runs.WEIGHTS).is_file():
        raise RunError(f"the base run '{base}' of LoRA run '{run}' is gone (no {runs.WEIGHTS}); "
                       f"restore it there")
    if weights_sha256(base) != sec["base_sha256"]:
        raise RunError(f"the base run '{base}' changed since '{run}' was fine-tuned from it (its weights' "
                       f"sha256 differs); restore that base, or fine-tune again")
    return base


def _base_model(base: Path, model_cfg: dict, quant: QuantSpec | None = None) -> Transformer:
    """The base run's model; for qlora with its embedding and linear layers quantized (frozen)."""
    model = Transformer(LMConfig.from_dict(model_cfg))
    runs.load_weights(base, model)
    if quant is not None:
        from genlab.optimize.quantize import quantize_model

        check_shapes(model.cfg, quant)
        quantize_model(model, quant)
    return model


def _quant(sec: dict) -> QuantSpec | None:
    return QuantSpec.from_dict(sec["quantization"]) if sec.get("method") == "qlora" else None


def _peft():
    try:
        with quiet("peft", "transformers", "torchao", root=True, fds=True):
            import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft package: pip install 'genlab[finetune]'") from None
    return peft


def inject_lora(model: Transformer, lora: LoraSettings) -> Transformer:
    """Put peft's LoRA layers around ``lora.targets`` in ``model`` (in place) and freeze the rest."""
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
               if isinstance(m, (torch.nn.Linear, QuantLinear))}
    missing = [t for t in lora.targets if t not in present]
    if missing:
        raise ConfigError(f"--lora-targets: the model has no module '{missing[0]}'; "
                          f"choose from {', '.join(t for t in LORA_TARGETS if t in present)}")
    peft = _peft()
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.targets), bias="none")
    # genlab's quantized layers are not a layer type peft knows; its custom-module hook takes them
    # with peft's own LoRA Linear, told their shape (the base layer's forward does the dequantizing).
    config._register_custom_module({QuantLinear: _quant_lora_class(peft)})
    with quiet("peft", root=True):
        peft.inject_adapter_in_model(config, model, adapter_name=_PEFT_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def _quant_lora_class(peft):
    class QuantLoraLinear(peft.tuners.lora.Linear):
        def _get_in_out_features(self, module):
            return module.in_features, module.out_features

    return QuantLoraLinear


_IN_MODEL = re.compile(rf"\.(lora_[AB])\.{_PEFT_NAME}\.")


def adapter_weights(model: torch.nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapter tensors, named ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, from the model
    or from its full ``state_dict`` (what the trainer gathers from an FSDP-sharded model)."""
    sd = runs.unwrap(model).state_dict() if state_dict is None else state_dict
    return {_IN_MODEL.sub(r".\1.", name): t.detach().to("cpu").contiguous() for name, t in sd.items() if ".lora_" in name}


def read_adapter(run: Path) -> dict[str, torch.Tensor]:
    path = Path(run) / ADAPTER
    if not path.exists():
        raise RunError(f"LoRA run '{run}' has no {ADAPTER}; it has not saved a checkpoint yet")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise RunError(f"{path} is corrupted ({e}); restore it or fine-tune again") from None


def load_adapter(run: Path, model: torch.nn.Module) -> None:
    """Load ``run``'s adapter.safetensors into a model that ``inject_lora`` prepared."""
    runs.recover(Path(run), ADAPTER)
    tensors = {n.replace(".lora_A.", f".lora_A.{_PEFT_NAME}.").replace(".lora_B.", f".lora_B.{_PEFT_NAME}."): t
               for n, t in read_adapter(run).items()}
    target = runs.unwrap(model)
    expected = {n for n in target.state_dict() if ".lora_" in n}
    if set(tensors) != expected:
        raise RunError(f"{Path(run) / ADAPTER} does not match the adapters in {runs.CONFIG} "
                       f"(missing: {sorted(expected - set(tensors))[:2]}, unexpected: {sorted(set(tensors) - expected)[:2]})")
    try:
        target.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e)[:120])
        raise RunError(f"{Path(run) / ADAPTER} does not match the adapters in {runs.CONFIG} ({first})") from None


def _settings(sec: dict) -> LoraSettings:
    return LoraSettings(rank=int(sec["rank"]), alpha=float(sec["alpha"]), dropout=float(sec["dropout"]),
                        targets=list(sec["targets"]))


def lora_model(run: Path, cfg: dict) -> Transformer:
    """A LoRA run as a model: the base's weights (quantized for qlora) with the run's adapters
    injected (unmerged)."""
    sec = lora_section(cfg)
    assert sec is not None
    model = _base_model(check_base(run, sec), cfg["model"], _quant(sec))
    inject_lora(model, _settings(sec))
    load_adapter(run, model)
    return model


def merged_model(run: Path, cfg: dict) -> Transformer:
    """A LoRA run as a plain ``Transformer``: ``W + (alpha / r) * B @ A`` for every adapted projection
    (for qlora, ``W`` is the dequantized base the adapters were trained over)."""
    sec = lora_section(cfg)
    if sec is None:
        raise RunError(f"'{run}' is not a LoRA run (its config.json has no finetune section with method "
                       f"lora or qlora); nothing to merge")
    model = _base_model(check_base(run, sec), cfg["model"], _quant(sec))
    if _quant(sec) is not None:
        model = dequantized(model)
    adapters = read_adapter(run)
    scaling = _settings(sec).scaling
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in sorted(n[: -len(".lora_A.weight")] for n in adapters if n.endswith(".lora_A.weight")):
            linear = modules.get(name)
            b = adapters.get(f"{name}.lora_B.weight")
            if not isinstance(linear, torch.nn.Linear) or b is None:
                raise RunError(f"{Path(run) / ADAPTER} does not match the model in {runs.CONFIG} ({name})")
            a = adapters[f"{name}.lora_A.weight"]
            delta = (b.double() @ a.double()) * scaling
            linear.weight.copy_((linear.weight.double() + delta).to(linear.weight.dtype))
    return model.eval()


# ---- the adapter checkpoint (committed like runs.save_checkpoint) ----------------------------------------


class LoraTask(LMTask):
    """The LM objective on a model whose only trainable parameters are LoRA adapters; its checkpoints
    hold the adapters alone (the trainer calls ``save_checkpoint`` / ``load_weights``)."""

    def save_checkpoint(self, run: Path, model: torch.nn.Module, state: dict, meta: dict | None = None,
                        tensors: dict | None = None) -> None:
        runs.save_checkpoint(run, model, state, meta, tensors=adapter_weights(model, tensors), weights=ADAPTER)

    def load_weights(self, run: Path, model: torch.nn.Module) -> None:
        load_adapter(run, model)
        adapter_step, state_step = runs.checkpoint_steps(run, ADAPTER)
        if state_step is not None and adapter_step is not None and state_step != adapter_step:
            raise RunError(f"{run}: adapters (step {adapter_step}) and train state (step {state_step}) disagree")


class LoraChatTask(ChatTask, LoraTask):
    """Chat JSONL data (the loss on the assistant's tokens) with LoRA checkpoints."""


# ---- fine-tuning and merging -----------------------------------------------------------------------------

_CARRIED = ("eos_token", "chat_template", "source")  # what chat and generation read from the base's config


def finetune(spec: FinetuneSpec) -> TrainResult:
    """Fine-tune (or resume fine-tuning) ``spec.base`` on ``spec.data`` into the run ``spec.run``."""
    run = Path(spec.run)
    if spec.resume:
        saved = runs.read_config(run, family="lm")
        method = lora_section(saved)["method"] if lora_section(saved) else "full"
        if spec.method is not None and spec.method != method:
            raise ConfigError(f"run '{run}' was fine-tuned with --method {method}; resume it with that method")
        if method == "full":
            return train_lm(LMTrainSpec(run=run, train=spec.train, resume=True, quiet=spec.quiet))
        return _lora(spec, run, saved)
    spec.validate()
    if spec.base is None:
        raise ConfigError("give the run to fine-tune: genlab finetune BASE --data CORPUS --out RUN")
    context = base_config(spec.base)["model"]["context"]
    if spec.train is not None and spec.train.window is not None and spec.train.window > context:
        raise ConfigError(f"--context {spec.train.window} must be between 2 and the model's context ({context})")
    runs.require_new(run, spec.overwrite)
    if Path(spec.base).resolve() == run.resolve():
        raise ConfigError("--out must be a new run directory, not the base run")
    if spec.method == "full":
        return train_lm(LMTrainSpec(run=run, data=spec.data, train=spec.train, init_from=Path(spec.base),
                                    overwrite=spec.overwrite, quiet=spec.quiet))
    return _lora(spec, run, None)


def _lora(spec: FinetuneSpec, run: Path, saved: dict | None) -> TrainResult:
    tcfg = spec.train
    dist, log = begin(tcfg, spec.quiet)
    if saved is not None:  # resume
        sec = lora_section(saved)
        assert sec is not None
        base, lora, quant = check_base(run, sec), _settings(sec), _quant(sec)
        base_cfg = saved  # its model section is the base's
        data_cfg = DataConfig(**saved["data"]["config"])
        tok = tokmod.load(run / runs.TOKENIZER)
        tcfg = resumed_train_config(saved, tcfg)
    else:
        base, lora = Path(spec.base).resolve(), spec.lora  # type: ignore[arg-type]
        quant = spec.quant if spec.method == "qlora" else None
        base_cfg = base_config(base)
        data_cfg = spec.data
        tok = tokmod.load(base / runs.TOKENIZER)

    chat = conv.is_chat(data_cfg.corpus)  # conversations, rendered with the base's template (carried by the run)
    if chat:
        data = conv.prepare_chat(data_cfg, run if saved else base, log=log,
                                 expect=saved["data"]["fingerprint"] if saved else None)
    else:
        data = dist.main_first(lambda: prep.prepare(data_cfg, tok=tok, log=log))
    if data.meta["vocab_size"] != base_cfg["model"]["vocab_size"]:
        raise ConfigError(f"the base's tokenizer has {data.meta['vocab_size']} tokens but its model "
                          f"{base_cfg['model']['vocab_size']}; the base run is damaged")

    seed_everything(tcfg.seed)  # the adapters' random init (A) is part of the run's seed
    model = inject_lora(_base_model(base, base_cfg["model"], quant), lora)
    task = (LoraChatTask if chat else LoraTask)(model, data, tcfg.batch_size, tcfg.eval_batches,
                                                window=tcfg.window)  # a too-small corpus fails here

    if saved is None:
        create_run(run, {
            "family": "lm",
            "preset": base_cfg.get("preset"),
            "model": base_cfg["model"],
            "train": tcfg.to_dict(),
            "data": {"config": data_cfg.to_dict(), "fingerprint": data.fingerprint,
                     "train_tokens": data.meta["train_tokens"], "val_tokens": data.meta["val_tokens"],
                     "tokenizer": data.meta["tokenizer"], "bytes_per_token": data.meta["bytes_per_token"]},
            "finetune": {"method": "qlora" if quant else "lora", "rank": lora.rank, "alpha": lora.alpha,
                         "dropout": lora.dropout, "targets": list(lora.targets), "base": str(base),
                         "base_sha256": weights_sha256(base),
                         **({"quantization": quant.to_dict()} if quant else {})},
            **{k: base_cfg[k] for k in _CARRIED if base_cfg.get(k) is not None},
        }, dist, spec.overwrite)
        if dist.is_main:
            shutil.copyfile(base / runs.TOKENIZER, run / runs.TOKENIZER)
        dist.barrier()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kind = f"QLoRA ({quant.method} base)" if quant else "LoRA"
    log(f"{kind} r={lora.rank} alpha={lora.alpha:g} on {', '.join(lora.targets)}: {trainable:,} trainable "
        f"parameters over the frozen base {base}")
    return train(task, tcfg, run, resume=saved is not None, quiet=spec.quiet, dist=dist,
                 extra_meta={"lora_base": str(base)})


def merge(run: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Fold LoRA run ``run``'s adapters into its base weights and write an ordinary run to ``out``."""
    run, out = Path(run), Path(out)
    cfg = runs.read_config(run, family="lm")
    sec = lora_section(cfg)
    if sec is not None and out.resolve() in (run.resolve(), Path(sec["base"]).resolve()):
        raise ConfigError("--out must be a new folder, not the LoRA run or its base")
    model = merged_model(run, cfg)
    merged = {k: v for k, v in cfg.items() if k != "finetune"}
    merged.update({"genlab_version": genlab.__version__, "init_from": sec["base"],  # type: ignore[index]
                   "merged_from": str(run.resolve())})
    with runs.staged_dir(out, overwrite) as tmp:
        write_json(tmp / runs.CONFIG, merged)
        runs.save_weights(tmp, model, meta={"merged_from": str(run.resolve())})
        shutil.copyfile(run / runs.TOKENIZER, tmp / runs.TOKENIZER)
    return out
