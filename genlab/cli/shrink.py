"""`genlab quantize` and `genlab distill`: make a model smaller."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import out, report_lm_training
from genlab.cli.options import (
    LM_MODEL_FLAGS,
    BatchOpt,
    CheckpointEveryOpt,
    DeviceOpt,
    DModelOpt,
    DtypeOpt,
    EvalBatchesOpt,
    EvalEveryOpt,
    FfnHiddenOpt,
    GradAccumOpt,
    GradClipOpt,
    LogEveryOpt,
    LrOpt,
    MinutesOpt,
    NHeadOpt,
    NKvHeadOpt,
    NLayerOpt,
    OverwriteOpt,
    OverwriteRunOpt,
    QuietOpt,
    SeedOpt,
    StepsOpt,
    TieEmbeddingsOpt,
    WarmupOpt,
    WeightDecayOpt,
    check_lm_preset,
    model_overrides,
    train_config_from,
)
from genlab.errors import GenlabError


def quantize_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained LM.")],
    method: Annotated[str, typer.Option(help="int8 (weight-only, per channel), int4 (weight-only, group-wise) "
                                             "or dynamic-int8 (int8 kernels for CPU inference).")] = "int8",
    group_size: Annotated[int, typer.Option(help="int4: weights per scale.")] = 32,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the quantized model.")] = None,
    overwrite: OverwriteOpt = False,
):
    """Quantize an LM's embedding and linear layers into a new run (generate and eval it like any run)."""
    from genlab.optimize.quantize import QuantSpec, quantize_run

    target = out_dir or run.with_name(f"{run.name}-{method}")
    res = quantize_run(run, target, QuantSpec(method=method, group_size=group_size), overwrite=overwrite)
    out.print(f"{res['method']}: model.safetensors {res['bytes_before'] / 1e6:.2f} MB -> "
              f"{res['bytes_after'] / 1e6:.2f} MB ({res['ratio']:.1f}x smaller) -> {res['run']}")


def distill_cmd(
    teacher: Annotated[Path, typer.Option(help="Run directory of the (larger) teacher LM.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the student.")] = None,
    preset: Annotated[str, typer.Option(help="Student preset: tiny, small or base.")] = "tiny",
    alpha: Annotated[float, typer.Option(help="Weight of the distillation term (0: plain training, the baseline).")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the distillation term.")] = 2.0,
    steps: StepsOpt = None, minutes: MinutesOpt = None,
    batch_size: BatchOpt = None, grad_accum: GradAccumOpt = None, lr: LrOpt = None, warmup: WarmupOpt = None,
    weight_decay: WeightDecayOpt = None, grad_clip: GradClipOpt = None, eval_every: EvalEveryOpt = None,
    eval_batches: EvalBatchesOpt = None, checkpoint_every: CheckpointEveryOpt = None, log_every: LogEveryOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    context: Annotated[int, typer.Option(help="Student context (default: the teacher's).")] = None,
    n_layer: NLayerOpt = None, n_head: NHeadOpt = None, n_kv_head: NKvHeadOpt = None, d_model: DModelOpt = None,
    ffn_hidden: FfnHiddenOpt = None, tie_embeddings: TieEmbeddingsOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the student in --out where it stopped.")] = False,
    overwrite: OverwriteRunOpt = False,
    quiet: QuietOpt = False,
):
    """Distill a smaller LM from a trained one (same tokenizer and data), through the shared trainer."""
    args = locals()
    from genlab.optimize.distill import DistillSpec, distill

    check_lm_preset(preset)
    if out_dir is None:
        raise GenlabError("give the student's run directory: --out RUN")
    result = distill(DistillSpec(run=out_dir, teacher=teacher, preset=preset, train=train_config_from(args, preset),
                                 alpha=alpha, temperature=temperature, resume=resume, overwrite=overwrite,
                                 quiet=quiet, model_overrides=model_overrides(args, LM_MODEL_FLAGS)))
    if not quiet:
        report_lm_training(result, out_dir)
