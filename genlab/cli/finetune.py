"""`genlab finetune`: LoRA adapters or full fine-tuning of an LM run on new text; `--merge` folds a LoRA
run's adapters into its base's weights; a GAN or VAE base is adapted to a folder of a few images per
class (genlab.train.finetune_images: new classes, FreezeD, DiffAugment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import comma_list, err, out, report_lm_training
from genlab.cli.options import (
    TRAIN_FLAGS,
    CheckpointEveryOpt,
    CompileOpt,
    DataOpt,
    DeviceOpt,
    DtypeOpt,
    EvalBatchesOpt,
    EvalEveryOpt,
    FsdpOpt,
    GradClipOpt,
    ImgTestFracOpt,
    LmBatchOpt,
    LmGradAccumOpt,
    LmWarmupOpt,
    LogEveryOpt,
    MinutesOpt,
    OverwriteRunOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    StepsOpt,
    WeightDecayOpt,
    train_config_from,
)
from genlab.errors import GenlabError

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
LM_ONLY = ("method", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "quant", "group_size", "window")
IMAGE_ONLY = ("freeze_d", "augment", "replay", "test_fraction")


def finetune_cmd(
    base: Annotated[Path, typer.Argument(help="Run directory of the model to fine-tune: an LM (trained or "
                                              "imported), or a GAN/VAE run to adapt to a folder of images.")] = None,
    data: DataOpt = None,
    method: Annotated[str, typer.Option(help="lora (train low-rank adapters; the run stores only them), qlora "
                                             "(the same over a frozen int4/int8 base) or full (train every "
                                             "weight). Default: lora.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the fine-tuned model "
                                                              "(with --merge: for the merged run).")] = None,
    merge: Annotated[Path, typer.Option("--merge", help="Fold this LoRA run's adapters into its base's weights "
                                                        "and write an ordinary run to --out.")] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r. [default: 8]")] = None,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (updates are scaled by alpha / r). [default: 16]")] = None,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the adapters' input. [default: 0.05]")] = None,
    lora_targets: Annotated[str, typer.Option(help=f"Comma list of the projections to adapt. [default: {TARGETS}]")] = None,
    quant: Annotated[str, typer.Option(help="qlora: how the frozen base is quantized, int4 or int8. "
                                            "[default: int4]")] = None,
    group_size: Annotated[int, typer.Option(help="qlora with int4: weights per scale. [default: 32]")] = None,
    window: Annotated[int, typer.Option("--context", help="Training window in tokens (default: the base's context, "
                                                          "e.g. 2048 for SmolLM2; the model keeps its own).")] = None,
    freeze_d: Annotated[int, typer.Option(help="GAN base: keep the discriminator's first N conv blocks frozen "
                                               "(FreezeD). [default: 2]")] = None,
    augment: Annotated[str, typer.Option(help="GAN/VAE base: differentiable augmentations of what D sees (GAN; "
                                              "default translation,cutout,color) or of the inputs (VAE: translation, "
                                              "flip; default none); 'none' turns them off.")] = None,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="GAN/VAE base: no augmentation.")] = False,
    replay: Annotated[float, typer.Option(help="GAN/VAE base: share of each batch drawn from the frozen base for "
                                              "the classes the folder lacks, so they are kept (0: off). "
                                              "[default: 0.5]")] = None,
    test_fraction: ImgTestFracOpt = None,
    steps: StepsOpt = None,
    minutes: MinutesOpt = None,
    batch_size: LmBatchOpt = None,
    grad_accum: LmGradAccumOpt = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate. [default: 1e-3 for lora, 2e-4 for full]")] = None,
    warmup: LmWarmupOpt = None,
    weight_decay: WeightDecayOpt = None,
    grad_clip: GradClipOpt = None,
    eval_every: EvalEveryOpt = None,
    eval_batches: EvalBatchesOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    log_every: LogEveryOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    compile: CompileOpt = False,
    fsdp: FsdpOpt = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    quiet: QuietOpt = False,
):
    """Fine-tune an LM run on new text, or on chat .jsonl (the loss on the assistant's replies): LoRA adapters
    (through peft) or every weight; --merge a LoRA run. A GAN or VAE run is adapted to a folder of a few
    images per class (new classes are added; FreezeD and DiffAugment for a GAN)."""
    args = dict(locals())
    from genlab.train import finetune as ft

    if out_dir is None:
        raise GenlabError("give the output run directory: --out RUN")
    lora_flags = [f"--{name.replace('_', '-')}" for name in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")
                  if args[name] is not None]
    quant_flags = [f"--{name.replace('_', '-')}" for name in ("quant", "group_size") if args[name] is not None]
    if merge is not None:
        if base is not None or data or resume or method is not None or lora_flags or quant_flags:
            raise GenlabError("--merge takes only the LoRA run and --out (and --overwrite)")
        merged = ft.merge(merge, out_dir, overwrite=overwrite)
        out.print(f"merged the adapters of {merge} into its base's weights -> {merged}")
        return
    if _image_base(base, out_dir, resume):
        _finetune_image(args)
        return
    image_flags = [f"--{name.replace('_', '-')}" for name in IMAGE_ONLY if args[name] is not None] + (
        ["--no-augment"] if no_augment else [])
    if image_flags:
        raise GenlabError(f"{image_flags[0]} is for GAN/VAE bases; '{base or out_dir}' is a language-model run")
    if method is not None and method not in ft.METHODS:
        raise GenlabError(f"unknown --method '{method}'; choose lora, qlora or full")
    if method == "full" and lora_flags:
        raise GenlabError(f"{lora_flags[0]} applies to --method lora and qlora")
    if quant_flags and method != "qlora":
        raise GenlabError(f"{quant_flags[0]} applies to --method qlora")
    if resume:
        if base is not None or data:
            raise GenlabError("--resume continues the run in --out with its own base and data; "
                              "give neither BASE nor --data")
    elif base is None or not data:
        raise GenlabError("give the run to fine-tune and the text: genlab finetune BASE --data CORPUS --out RUN")
    defaults = ft.LoraSettings()
    lora = ft.LoraSettings(
        rank=defaults.rank if lora_rank is None else lora_rank,
        alpha=defaults.alpha if lora_alpha is None else lora_alpha,
        dropout=defaults.dropout if lora_dropout is None else lora_dropout,
        targets=defaults.targets if lora_targets is None else comma_list(lora_targets))
    if args["lr"] is None:
        args["lr"] = ft.DEFAULT_LR[method or "lora"]
    from genlab.config import DataConfig
    from genlab.models.quantized import QuantSpec

    result = ft.finetune(ft.FinetuneSpec(run=out_dir, base=base, data=DataConfig(corpus=data or []), method=method,
                                         lora=lora, quant=QuantSpec(quant or "int4", group_size or 32),
                                         train=train_config_from(args, None), resume=resume,
                                         overwrite=overwrite, quiet=quiet))
    if not quiet:
        report_lm_training(result, out_dir)


def _image_base(base: Path | None, out_dir: Path, resume: bool) -> bool:
    """Whether this is an image fine-tune: a GAN/VAE base, or (--resume) a GAN/VAE run in --out."""
    from genlab.train.finetune_images import is_image_run

    path = out_dir if resume and base is None else base
    return path is not None and is_image_run(path)


def _finetune_image(args: dict) -> None:
    from genlab.train.finetune_images import ImageFinetuneSpec, finetune_image

    given = [f"--{'context' if name == 'window' else name.replace('_', '-')}" for name in LM_ONLY
             if args[name] is not None] + (["--fsdp"] if args["fsdp"] else [])
    if given:
        raise GenlabError(f"{given[0]} is for language-model runs; a GAN/VAE base takes --freeze-d, --augment, "
                          f"--replay and the training flags")
    if args["no_augment"] and args["augment"] is not None:
        raise GenlabError("give --augment or --no-augment, not both")
    data, resume = args["data"] or [], args["resume"]
    if resume and (args["base"] is not None or data):
        raise GenlabError("--resume continues the run in --out with its own base and data; give neither BASE nor --data")
    if not resume and len(data) != 1:
        raise GenlabError("give one folder of images (one sub-folder per class): genlab finetune BASE --data FOLDER "
                          "--out RUN")
    overrides = {field: args[flag] for flag, field in TRAIN_FLAGS.items()
                 if flag in args and flag not in ("fsdp", "window") and args[flag] is not None}
    run = args["out_dir"]
    result = finetune_image(ImageFinetuneSpec(
        run=run, base=args["base"], data=data[0] if data else None,
        test_fraction=0.1 if args["test_fraction"] is None else args["test_fraction"],
        freeze_d=args["freeze_d"], augment="none" if args["no_augment"] else args["augment"],
        replay=args["replay"], train_overrides=overrides, resume=resume, overwrite=args["overwrite"], quiet=args["quiet"]))
    if not args["quiet"]:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        err.print(f"[green]done[/]: step {result.step}, {result.throughput:,.0f} img/s"
                  f"{', val ' + val if val else ''} -> {run} (sample grids in {run / 'samples'})")
