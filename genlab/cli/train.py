"""`genlab train lm|gan|vae|upscale|music`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from genlab.cli.common import err, report_lm_training
from genlab.cli.music import train_music_cmd
from genlab.cli.options import (
    LM_MODEL_FLAGS,
    BetasOpt,
    ChannelsLastOpt,
    CheckpointEveryOpt,
    CompileOpt,
    DataOpt,
    DeviceOpt,
    DModelOpt,
    DtypeOpt,
    EvalBatchesOpt,
    EvalEveryOpt,
    FfnHiddenOpt,
    FsdpOpt,
    GanGradClipOpt,
    GradAccumOpt,
    GradClipOpt,
    ImgBatchOpt,
    ImgDataOpt,
    ImgLrOpt,
    ImgRgbOpt,
    ImgSizeOpt,
    ImgTestFracOpt,
    LmBatchOpt,
    LmGradAccumOpt,
    LmLrOpt,
    LmWarmupOpt,
    LogEveryOpt,
    MinLrRatioOpt,
    MinutesOpt,
    NHeadOpt,
    NLayerOpt,
    OverwriteRunOpt,
    QuietOpt,
    ResumeOpt,
    RunOutOpt,
    SampleEveryOpt,
    SeedOpt,
    StepsOpt,
    TieEmbeddingsOpt,
    TokOpt,
    VocabOpt,
    WarmupOpt,
    WeightDecayOpt,
    check_lm_preset,
    model_overrides,
    train_config_from,
)

app = typer.Typer(no_args_is_help=True, help="Train a model: lm, gan, vae, upscale or music.")

ImgPresetOpt = Annotated[str, typer.Option(help="Model preset: tiny, small, or rgb32 / rgb64 for colour folders "
                                                    "of that side.")]
ImgRgbDefaultOpt = Annotated[bool, typer.Option("--rgb/--gray", help="Colour (3 channels) or grayscale; "
                                                "default: the preset's (rgb32/rgb64: colour), else grayscale.")]
UpscalePresetOpt = Annotated[str, typer.Option(help="Model preset: tiny or small.")]
ImgCondOpt = Annotated[bool, typer.Option("--conditional/--unconditional", help="Condition on the class label.")]
LatentOpt = Annotated[int, typer.Option(help="Size of the latent z.")]
EmbedOpt = Annotated[int, typer.Option(help="Size of the label embedding.")]


@app.command("lm")
def train_lm_cmd(
    data: DataOpt = None,
    out_dir: RunOutOpt = None,
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small or base.")] = "tiny",
    tokenizer: TokOpt = "bpe",
    vocab_size: VocabOpt = None,
    steps: StepsOpt = None,
    minutes: MinutesOpt = None,
    batch_size: LmBatchOpt = None,
    grad_accum: LmGradAccumOpt = None,
    lr: LmLrOpt = None,
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
    context: Annotated[int, typer.Option(help="Context length (tokens).")] = None,
    n_layer: NLayerOpt = None,
    n_head: NHeadOpt = None,
    n_kv_head: Annotated[int, typer.Option(help="Key/value heads (grouped-query attention).")] = None,
    d_model: DModelOpt = None,
    ffn_hidden: FfnHiddenOpt = None,
    rope_theta: Annotated[float, typer.Option()] = None,
    tie_embeddings: TieEmbeddingsOpt = None,
    dropout: Annotated[float, typer.Option()] = None,
    resume: ResumeOpt = False,
    init_from: Annotated[Path, typer.Option(help="Start from this run's weights and tokenizer (fine-tuning).")] = None,
    overwrite: OverwriteRunOpt = False,
    quiet: QuietOpt = False,
):
    """Train (or fine-tune, or resume) a Llama-style language model."""
    args = locals()
    from genlab.config import LM_PRESETS, DataConfig
    from genlab.train.lm import LMTrainSpec, train_lm

    check_lm_preset(preset)
    run = out_dir or Path("runs") / f"lm-{preset}"
    dcfg = DataConfig(corpus=data or ["fortunes"], tokenizer=tokenizer,
                      vocab_size=vocab_size or LM_PRESETS[preset]["vocab_size"])
    result = train_lm(LMTrainSpec(run=run, data=dcfg, preset=preset, train=train_config_from(args, preset),
                                  model_overrides=model_overrides(args, LM_MODEL_FLAGS), resume=resume,
                                  init_from=init_from, overwrite=overwrite, quiet=quiet))
    if not quiet:
        report_lm_training(result, run)


@app.command("gan")
def train_gan_cmd(
    data: ImgDataOpt = "fashion-mnist", out_dir: RunOutOpt = None, preset: ImgPresetOpt = "tiny",
    image_size: ImgSizeOpt = None, rgb: ImgRgbDefaultOpt = None, conditional: ImgCondOpt = True,
    test_fraction: ImgTestFracOpt = 0.1,
    steps: StepsOpt = None, minutes: MinutesOpt = None, batch_size: ImgBatchOpt = None,
    grad_accum: GradAccumOpt = None, lr: ImgLrOpt = None, betas: BetasOpt = None, warmup: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None, weight_decay: WeightDecayOpt = None, grad_clip: GanGradClipOpt = None,
    eval_every: EvalEveryOpt = None, eval_batches: EvalBatchesOpt = None, checkpoint_every: CheckpointEveryOpt = None,
    sample_every: SampleEveryOpt = None, log_every: LogEveryOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", compile: CompileOpt = False,
    channels_last: ChannelsLastOpt = True,
    latent_dim: LatentOpt = None, embed_dim: EmbedOpt = None,
    g_width: Annotated[int, typer.Option(help="Generator channels at full resolution.")] = None,
    d_width: Annotated[int, typer.Option(help="Discriminator channels at full resolution.")] = None,
    ema_decay: Annotated[float, typer.Option(help="Decay of the EMA generator used for sampling.")] = None,
    d_steps: Annotated[int, typer.Option(help="Discriminator updates per generator update.")] = None,
    d_lr_mult: Annotated[float, typer.Option(help="Discriminator lr = lr x this.")] = None,
    mbstd_group: Annotated[int, typer.Option(help="Minibatch-stddev group size in the discriminator (0: off).")] = None,
    mode_seeking: Annotated[float, typer.Option(help="Weight of the mode-seeking (MSGAN) term in G's loss (0: off).")] = None,
    aux_class: Annotated[float, typer.Option(help="Weight of the auxiliary-classifier (AC-GAN) loss (0: off).")] = None,
    resume: ResumeOpt = False, overwrite: OverwriteRunOpt = False, quiet: QuietOpt = False,
):
    """Train a class-conditional DCGAN (hinge loss, spectral norm, EMA generator)."""
    _train_image("gan", locals())


@app.command("vae")
def train_vae_cmd(
    data: ImgDataOpt = "fashion-mnist", out_dir: RunOutOpt = None, preset: ImgPresetOpt = "tiny",
    image_size: ImgSizeOpt = None, rgb: ImgRgbDefaultOpt = None, conditional: ImgCondOpt = True,
    test_fraction: ImgTestFracOpt = 0.1,
    steps: StepsOpt = None, minutes: MinutesOpt = None, batch_size: ImgBatchOpt = None,
    grad_accum: GradAccumOpt = None, lr: ImgLrOpt = None, betas: BetasOpt = None, warmup: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None, weight_decay: WeightDecayOpt = None, grad_clip: GradClipOpt = None,
    eval_every: EvalEveryOpt = None, eval_batches: EvalBatchesOpt = None, checkpoint_every: CheckpointEveryOpt = None,
    sample_every: SampleEveryOpt = None, log_every: LogEveryOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", compile: CompileOpt = False,
    channels_last: ChannelsLastOpt = True,
    latent_dim: LatentOpt = None, embed_dim: EmbedOpt = None,
    width: Annotated[int, typer.Option(help="Channels at full resolution.")] = None,
    likelihood: Annotated[str, typer.Option(help="bernoulli or gaussian.")] = None,
    sigma: Annotated[float, typer.Option(help="Gaussian likelihood: pixel standard deviation (pixels in [0, 1]).")] = None,
    learn_sigma: Annotated[bool, typer.Option("--learn-sigma/--fixed-sigma",
                                              help="Gaussian likelihood: learn sigma (sigma-VAE); --sigma starts it.")] = None,
    beta: Annotated[float, typer.Option(help="Weight of the KL term (1: the ELBO).")] = None,
    adversarial: Annotated[float, typer.Option(
        help="VAE-GAN: a discriminator judges the decoder's images; its term's gradient at the decoder's "
             "last layer as a fraction of the reconstruction's (0: off).")] = None,
    d_width: Annotated[int, typer.Option(help="VAE-GAN: discriminator channels at full resolution.")] = None,
    resume: ResumeOpt = False, overwrite: OverwriteRunOpt = False, quiet: QuietOpt = False,
):
    """Train a convolutional (beta-)VAE, optionally class-conditional (and adversarial: VAE-GAN)."""
    _train_image("vae", locals())


def _train_image(family: str, args: dict[str, Any]) -> None:
    """`train gan` and `train vae`: the same data and training flags; the model flags are the family's."""
    from genlab.data.images import ImageDataConfig
    from genlab.train.image import CONFIGS, ImageTrainSpec, check_preset, preset_data_defaults, train_image

    data, preset, quiet = args["data"], args["preset"], args["quiet"]
    check_preset(family, preset)
    run = args["out_dir"] or Path("runs") / f"{family}-{preset}"
    image_size, channels = preset_data_defaults(preset, args["image_size"], args["rgb"], data)
    dcfg = ImageDataConfig(source=data, image_size=image_size, channels=channels,
                           test_fraction=args["test_fraction"])
    result = train_image(ImageTrainSpec(
        family=family, run=run, data=dcfg, preset=preset, conditional=args["conditional"],
        model_overrides=model_overrides(args, [f.name for f in fields(CONFIGS[family])]),
        train=train_config_from(args, preset, family), resume=args["resume"], overwrite=args["overwrite"],
        quiet=quiet))
    if not quiet:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        err.print(f"[green]done[/]: step {result.step}, {result.throughput:,.0f} img/s"
                  f"{', val ' + val if val else ''} -> {run} (sample grids in {run / 'samples'})")


@app.command("upscale")
def train_upscale_cmd(
    data: ImgDataOpt = "fashion-mnist", out_dir: RunOutOpt = None, preset: UpscalePresetOpt = "tiny",
    scale: Annotated[int, typer.Option(help="Enlargement the model learns: 2 or 4 (default 2; a resumed run keeps its own).")] = None,
    image_size: Annotated[int, typer.Option(help="Square side the data set's images are brought to (default: 28 for "
                                                 "fashion-mnist, else 64).")] = None,
    rgb: ImgRgbOpt = False, test_fraction: ImgTestFracOpt = 0.1,
    patch: Annotated[int, typer.Option(help="High-res training patch side (a multiple of --scale; default: 7/8 of "
                                            "the image side, at most 48).")] = None,
    steps: StepsOpt = None, minutes: MinutesOpt = None, batch_size: ImgBatchOpt = None,
    grad_accum: GradAccumOpt = None, lr: ImgLrOpt = None, betas: BetasOpt = None, warmup: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None, weight_decay: WeightDecayOpt = None, grad_clip: GradClipOpt = None,
    eval_every: EvalEveryOpt = None, eval_batches: EvalBatchesOpt = None, checkpoint_every: CheckpointEveryOpt = None,
    sample_every: SampleEveryOpt = None, log_every: LogEveryOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", compile: CompileOpt = False,
    width: Annotated[int, typer.Option(help="Feature channels of the network.")] = None,
    blocks: Annotated[int, typer.Option(help="Residual blocks.")] = None,
    resume: ResumeOpt = False, overwrite: OverwriteRunOpt = False, quiet: QuietOpt = False,
):
    """Train a super-resolution model (residual conv blocks + PixelShuffle on top of bicubic) on
    high-res patches of a data set and their bicubic-shrunk partners."""
    args = locals()
    from genlab.data.images import ImageDataConfig
    from genlab.train.upscale import UpscaleTrainSpec, bicubic_gain, check_preset, train_upscale

    check_preset(preset)
    run = out_dir or Path("runs") / f"upscale-{preset}"
    dcfg = ImageDataConfig(source=data, image_size=image_size or (28 if data == "fashion-mnist" else 64),
                           channels=3 if rgb else 1, test_fraction=test_fraction)
    result = train_upscale(UpscaleTrainSpec(
        run=run, data=dcfg, scale=scale, preset=preset, patch=patch,
        model_overrides=model_overrides(args, ("width", "blocks")),
        train=train_config_from(args, preset, "upscale"), resume=resume, overwrite=overwrite, quiet=quiet))
    if not quiet:
        val = result.val
        scores = (f", held-out PSNR {val['psnr']:.2f} dB (bicubic {val['psnr_bicubic']:.2f}), SSIM {val['ssim']:.4f} "
                  f"(bicubic {val['ssim_bicubic']:.4f}): {bicubic_gain(val)}") if "psnr" in val else ""
        err.print(f"[green]done[/]: step {result.step}, {result.throughput:,.0f} img/s{scores} -> {run} "
                  f"(sample grids in {run / 'samples'})", highlight=False)


app.command("music")(train_music_cmd)  # genlab/cli/music.py
