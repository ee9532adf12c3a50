"""The flags several verbs share, declared once as ``Annotated`` option types, and the one function that
turns the shared training flags into a ``TrainConfig``.

Typer reads a command's flags from its signature, so each command still names its parameters; what is
shared is the type (flag, help text) and, for training, ``train_config_from``, which picks the training
flags out of the command's arguments (``locals()``) instead of each verb forwarding a dozen by hand.
Where one flag's help differs between verbs (what a batch holds, what the lr drives) there is one type per
wording, named for the verbs that use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genlab.errors import GenlabError

if TYPE_CHECKING:
    from genlab.config import TrainConfig

# ---- data --------------------------------------------------------------------------------------------

DataOpt = Annotated[list[str], typer.Option("--data", "-d", help="Corpus: files, folders, globs, 'fortunes' or 'pystdlib' (repeatable).")]
TokOpt = Annotated[str, typer.Option(help="Tokenizer: bpe (byte-level BPE trained on the corpus) or char.")]
VocabOpt = Annotated[int, typer.Option(help="BPE vocabulary size.")]

ImgDataOpt = Annotated[str, typer.Option("--data", "-d", help="fashion-mnist, shapes (drawn), or a folder with one sub-folder of images per class.")]
ImgSizeOpt = Annotated[int, typer.Option(help="Square image side in pixels (e.g. 16, 28, 32, 64); default: 28 for fashion-mnist, else 32.")]
ImgRgbOpt = Annotated[bool, typer.Option("--rgb/--gray", help="Colour (3 channels) or grayscale.")]
ImgTestFracOpt = Annotated[float, typer.Option(help="Folders: share of each class held out for evaluation.")]

# ---- runs --------------------------------------------------------------------------------------------

RunOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory.")]
ImageRunArg = Annotated[Path, typer.Argument(help="Run directory of a trained GAN or VAE.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")]
OverwriteRunOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q")]

# ---- where and how to compute --------------------------------------------------------------------------

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
FastOpt = Annotated[bool, typer.Option("--fast/--no-fast", help="PyTorch runs: the fused, kernel-backed inference path (default), or the plain reference path.")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (autocast).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
ChannelsLastOpt = Annotated[bool, typer.Option(
    "--channels-last/--no-channels-last", help="Image models: convolutions in NHWC layout (faster; same results "
                                              "within float rounding).")]
FsdpOpt = Annotated[bool, typer.Option("--fsdp", help="Under torchrun: shard weights, gradients and optimizer state "
                                                      "across the processes (FSDP2) instead of copying them (DDP).")]
ScaleOpt = Annotated[int, typer.Option(help="Enlarge pixels by this factor.")]
LabelOpt = Annotated[str, typer.Option(help="Class name (e.g. Dress) or index.")]
JsonOpt = Annotated[bool, typer.Option("--json")]
WriteOpt = Annotated[Path, typer.Option(help="Append the table to this Markdown file.")]
NoWriteOpt = Annotated[bool, typer.Option("--no-write")]

# ---- training: train lm, train gan, train vae, distill ---------------------------------------------------

StepsOpt = Annotated[int, typer.Option(help="Budget in optimizer steps.")]
MinutesOpt = Annotated[float, typer.Option(help="Budget in wall-clock minutes (whichever ends first).")]
BatchOpt = Annotated[int, typer.Option()]
LmBatchOpt = Annotated[int, typer.Option(help="Sequences per micro-batch (per process).")]
ImgBatchOpt = Annotated[int, typer.Option(help="Images per micro-batch (per process).")]
GradAccumOpt = Annotated[int, typer.Option()]
LmGradAccumOpt = Annotated[int, typer.Option(help="Micro-batches per optimizer step.")]
LrOpt = Annotated[float, typer.Option()]
LmLrOpt = Annotated[float, typer.Option(help="Peak learning rate.")]
ImgLrOpt = Annotated[float, typer.Option(help="Peak learning rate (GAN: the generator's).")]
WarmupOpt = Annotated[int, typer.Option()]
LmWarmupOpt = Annotated[int, typer.Option(help="Linear warmup steps.")]
MinLrRatioOpt = Annotated[float, typer.Option()]
BetasOpt = Annotated[str, typer.Option(help="Adam betas as 'b1,b2'.")]
WeightDecayOpt = Annotated[float, typer.Option()]
GradClipOpt = Annotated[float, typer.Option()]
GanGradClipOpt = Annotated[float, typer.Option(help="Clip each optimizer's gradient norm (0: no clipping).")]
EvalEveryOpt = Annotated[int, typer.Option()]
EvalBatchesOpt = Annotated[int, typer.Option()]
CheckpointEveryOpt = Annotated[int, typer.Option()]
SampleEveryOpt = Annotated[int, typer.Option()]
LogEveryOpt = Annotated[int, typer.Option()]
SeedOpt = Annotated[int, typer.Option()]

# The training flags, by parameter name, and the TrainConfig field each one sets.
TRAIN_FLAGS = {
    "steps": "steps", "minutes": "minutes", "batch_size": "batch_size", "grad_accum": "grad_accum", "lr": "lr",
    "min_lr_ratio": "min_lr_ratio", "warmup": "warmup_steps", "weight_decay": "weight_decay", "betas": "betas",
    "grad_clip": "grad_clip", "eval_every": "eval_every", "eval_batches": "eval_batches",
    "checkpoint_every": "checkpoint_every", "sample_every": "sample_every", "log_every": "log_every",
    "seed": "seed", "device": "device", "dtype": "dtype", "compile": "compile",
    "channels_last": "channels_last", "fsdp": "fsdp", "window": "window",
}


def train_config_from(args: Mapping[str, Any], preset: str, family: str = "lm") -> TrainConfig:
    """The ``TrainConfig`` of a training verb: the family's preset defaults, overridden by every training flag
    the command declares and the user gave (``args`` is the command's ``locals()``; unset flags are None)."""
    settings = {field: args[flag] for flag, field in TRAIN_FLAGS.items() if flag in args}
    if settings.get("betas") is not None:
        settings["betas"] = parse_betas(settings["betas"])
    if family == "lm":
        from genlab.config import train_config

        return train_config(preset, **settings)
    if family == "upscale":
        from genlab.train.upscale import upscale_train_config

        return upscale_train_config(preset, **settings)
    from genlab.train.image import image_train_config

    return image_train_config(family, preset, **settings)


def parse_betas(text: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(b) for b in text.split(","))
    except ValueError:
        raise GenlabError(f"--betas must be two numbers like 0.5,0.999 (got '{text}')") from None
    return b1, b2


def model_overrides(args: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The model settings among ``names`` that the command declares and the user gave."""
    return {name: args[name] for name in names if args.get(name) is not None}


# ---- the language model's shape: train lm, distill ---------------------------------------------------------

def check_lm_preset(preset: str) -> None:
    from genlab.config import LM_PRESETS

    if preset not in LM_PRESETS:
        raise GenlabError(f"unknown preset '{preset}'; choose one of: {', '.join(LM_PRESETS)}")


LM_MODEL_FLAGS = ("context", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden", "rope_theta",
                  "tie_embeddings", "dropout")
NLayerOpt = Annotated[int, typer.Option()]
NHeadOpt = Annotated[int, typer.Option()]
NKvHeadOpt = Annotated[int, typer.Option()]
DModelOpt = Annotated[int, typer.Option()]
FfnHiddenOpt = Annotated[int, typer.Option()]
TieEmbeddingsOpt = Annotated[bool, typer.Option("--tie-embeddings/--no-tie-embeddings")]
