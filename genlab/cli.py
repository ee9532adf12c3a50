"""The `genlab` command: a thin Typer layer that builds configs and calls the library.

Errors a user can cause print one line (``error: ...``) and exit with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from genlab.errors import GenlabError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="genlab: train, size, shrink, ship and serve generative models.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model: lm, gan or vae.")
generate_app = typer.Typer(no_args_is_help=True, help="Generate with a trained run.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare data sets ahead of training.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure speed; results go to BENCHMARKS.md.")
app.add_typer(train_app, name="train")
app.add_typer(generate_app, name="generate")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

DataOpt = Annotated[list[str], typer.Option("--data", "-d", help="Corpus: files, folders, globs, 'fortunes' or 'pystdlib' (repeatable).")]
TokOpt = Annotated[str, typer.Option(help="Tokenizer: bpe (byte-level BPE trained on the corpus) or char.")]
VocabOpt = Annotated[int, typer.Option(help="BPE vocabulary size.")]


@train_app.command("lm")
def train_lm_cmd(
    data: DataOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = None,
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small or base.")] = "tiny",
    tokenizer: TokOpt = "bpe",
    vocab_size: VocabOpt = None,
    steps: Annotated[int, typer.Option(help="Budget in optimizer steps.")] = None,
    minutes: Annotated[float, typer.Option(help="Budget in wall-clock minutes (whichever ends first).")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per micro-batch (per process).")] = None,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = None,
    warmup: Annotated[int, typer.Option(help="Linear warmup steps.")] = None,
    weight_decay: float = None,
    grad_clip: float = None,
    eval_every: int = None,
    eval_batches: int = None,
    checkpoint_every: int = None,
    log_every: int = None,
    seed: int = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (autocast).")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    context: Annotated[int, typer.Option(help="Context length (tokens).")] = None,
    n_layer: int = None,
    n_head: int = None,
    n_kv_head: Annotated[int, typer.Option(help="Key/value heads (grouped-query attention).")] = None,
    d_model: int = None,
    ffn_hidden: int = None,
    rope_theta: float = None,
    tie_embeddings: Annotated[bool, typer.Option("--tie-embeddings/--no-tie-embeddings")] = None,
    dropout: float = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    init_from: Annotated[Path, typer.Option(help="Start from this run's weights and tokenizer (fine-tuning).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
):
    """Train (or fine-tune, or resume) a Llama-style language model."""
    from genlab.config import LM_PRESETS, DataConfig, train_config
    from genlab.train.lm import LMTrainSpec, train_lm

    if preset not in LM_PRESETS:
        raise GenlabError(f"unknown preset '{preset}'; choose one of: {', '.join(LM_PRESETS)}")
    run = out_dir or Path("runs") / f"lm-{preset}"
    tcfg = train_config(
        preset, steps=steps, minutes=minutes, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup, weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every,
        eval_batches=eval_batches, checkpoint_every=checkpoint_every, log_every=log_every, seed=seed,
        device=device, dtype=dtype, compile=compile,
    )
    dcfg = DataConfig(corpus=data or ["fortunes"], tokenizer=tokenizer,
                      vocab_size=vocab_size or LM_PRESETS[preset]["vocab_size"])
    overrides = dict(context=context, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=d_model,
                     ffn_hidden=ffn_hidden, rope_theta=rope_theta, tie_embeddings=tie_embeddings, dropout=dropout)
    result = train_lm(LMTrainSpec(run=run, data=dcfg, preset=preset, train=tcfg, resume=resume,
                                  init_from=init_from, overwrite=overwrite, quiet=quiet,
                                  model_overrides={k: v for k, v in overrides.items() if v is not None}))
    if not quiet:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        err.print(f"[green]done[/]: step {result.step}, train loss {result.train_loss:.4f}"
                  f"{', val ' + val if val else ''} -> {run}")


# ---- image models: train gan|vae, generate image, animate, reconstruct ----------------------------

ImgDataOpt = Annotated[str, typer.Option("--data", "-d", help="fashion-mnist, shapes (drawn), or a folder with one sub-folder of images per class.")]
ImgOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory.")]
ImgPresetOpt = Annotated[str, typer.Option(help="Model preset: tiny or small.")]
ImgSizeOpt = Annotated[int, typer.Option(help="Square image side in pixels (e.g. 16, 28, 32, 64); default: 28 for fashion-mnist, else 32.")]
ImgRgbOpt = Annotated[bool, typer.Option("--rgb/--gray", help="Colour (3 channels) or grayscale.")]
ImgCondOpt = Annotated[bool, typer.Option("--conditional/--unconditional", help="Condition on the class label.")]
ImgTestFracOpt = Annotated[float, typer.Option(help="Folders: share of each class held out for evaluation.")]
StepsOpt = Annotated[int, typer.Option(help="Budget in optimizer steps.")]
MinutesOpt = Annotated[float, typer.Option(help="Budget in wall-clock minutes (whichever ends first).")]
BatchOpt = Annotated[int, typer.Option(help="Images per micro-batch (per process).")]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate (GAN: the generator's).")]
BetasOpt = Annotated[str, typer.Option(help="Adam betas as 'b1,b2'.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (autocast).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q")]
LatentOpt = Annotated[int, typer.Option(help="Size of the latent z.")]
EmbedOpt = Annotated[int, typer.Option(help="Size of the label embedding.")]
RunArg = Annotated[Path, typer.Argument(help="Run directory of a trained GAN or VAE.")]
LabelOpt = Annotated[str, typer.Option(help="Class name (e.g. Dress) or index.")]


def _train_image(family: str, opts: dict) -> None:
    """Shared body of `train gan` and `train vae`: sort the flags into data, training and model settings."""
    from dataclasses import fields

    from genlab.config import TrainConfig
    from genlab.data.images import ImageDataConfig
    from genlab.train.image import CONFIGS, ImageTrainSpec, check_preset, image_train_config, train_image

    data, preset, quiet = opts["data"], opts["preset"], opts["quiet"]
    check_preset(family, preset)
    opts["warmup_steps"] = opts.pop("warmup")
    if opts["betas"] is not None:
        try:
            b1, b2 = (float(b) for b in opts["betas"].split(","))
        except ValueError:
            raise GenlabError(f"--betas must be two numbers like 0.5,0.999 (got '{opts['betas']}')") from None
        opts["betas"] = (b1, b2)
    train = {f.name: opts[f.name] for f in fields(TrainConfig) if f.name in opts}
    model = {f.name: opts[f.name] for f in fields(CONFIGS[family]) if opts.get(f.name) is not None}
    run = opts["out_dir"] or Path("runs") / f"{family}-{preset}"
    dcfg = ImageDataConfig(source=data, image_size=opts["image_size"] or (28 if data == "fashion-mnist" else 32),
                           channels=3 if opts["rgb"] else 1, test_fraction=opts["test_fraction"])
    result = train_image(ImageTrainSpec(
        family=family, run=run, data=dcfg, preset=preset, conditional=opts["conditional"], model_overrides=model,
        train=image_train_config(family, preset, **train), resume=opts["resume"], overwrite=opts["overwrite"],
        quiet=quiet))
    if not quiet:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        err.print(f"[green]done[/]: step {result.step}, {result.throughput:,.0f} img/s"
                  f"{', val ' + val if val else ''} -> {run} (sample grids in {run / 'samples'})")


@train_app.command("gan")
def train_gan_cmd(
    data: ImgDataOpt = "fashion-mnist", out_dir: ImgOutOpt = None, preset: ImgPresetOpt = "tiny",
    image_size: ImgSizeOpt = None, rgb: ImgRgbOpt = False, conditional: ImgCondOpt = True,
    test_fraction: ImgTestFracOpt = 0.1,
    steps: StepsOpt = None, minutes: MinutesOpt = None, batch_size: BatchOpt = None, grad_accum: int = None,
    lr: LrOpt = None, betas: BetasOpt = None, warmup: int = None, min_lr_ratio: float = None,
    weight_decay: float = None,
    grad_clip: Annotated[float, typer.Option(help="Clip each optimizer's gradient norm (0: no clipping).")] = None,
    eval_every: int = None, eval_batches: int = None, checkpoint_every: int = None, sample_every: int = None,
    log_every: int = None, seed: int = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    compile: CompileOpt = False,
    latent_dim: LatentOpt = None, embed_dim: EmbedOpt = None,
    g_width: Annotated[int, typer.Option(help="Generator channels at full resolution.")] = None,
    d_width: Annotated[int, typer.Option(help="Discriminator channels at full resolution.")] = None,
    ema_decay: Annotated[float, typer.Option(help="Decay of the EMA generator used for sampling.")] = None,
    d_steps: Annotated[int, typer.Option(help="Discriminator updates per generator update.")] = None,
    d_lr_mult: Annotated[float, typer.Option(help="Discriminator lr = lr x this.")] = None,
    resume: ResumeOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
):
    """Train a class-conditional DCGAN (hinge loss, spectral norm, EMA generator)."""
    _train_image("gan", locals())


@train_app.command("vae")
def train_vae_cmd(
    data: ImgDataOpt = "fashion-mnist", out_dir: ImgOutOpt = None, preset: ImgPresetOpt = "tiny",
    image_size: ImgSizeOpt = None, rgb: ImgRgbOpt = False, conditional: ImgCondOpt = True,
    test_fraction: ImgTestFracOpt = 0.1,
    steps: StepsOpt = None, minutes: MinutesOpt = None, batch_size: BatchOpt = None, grad_accum: int = None,
    lr: LrOpt = None, betas: BetasOpt = None, warmup: int = None, min_lr_ratio: float = None,
    weight_decay: float = None, grad_clip: float = None,
    eval_every: int = None, eval_batches: int = None, checkpoint_every: int = None, sample_every: int = None,
    log_every: int = None, seed: int = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    compile: CompileOpt = False,
    latent_dim: LatentOpt = None, embed_dim: EmbedOpt = None,
    width: Annotated[int, typer.Option(help="Channels at full resolution.")] = None,
    likelihood: Annotated[str, typer.Option(help="bernoulli or gaussian.")] = None,
    sigma: Annotated[float, typer.Option(help="Gaussian likelihood: pixel standard deviation (pixels in [0, 1]).")] = None,
    beta: Annotated[float, typer.Option(help="Weight of the KL term (1: the ELBO).")] = None,
    resume: ResumeOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
):
    """Train a convolutional (beta-)VAE, optionally class-conditional."""
    _train_image("vae", locals())


@generate_app.command("image")
def generate_image_cmd(
    run: RunArg,
    n: Annotated[int, typer.Option(help="How many images.")] = 64,
    label: LabelOpt = None,
    seed: int = 0,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG grid, or a folder with --separate.")] = Path("grid.png"),
    separate: Annotated[bool, typer.Option("--separate", help="One PNG per image in the --out folder.")] = False,
    nrow: Annotated[int, typer.Option(help="Images per grid row (default: the number of classes, or 8).")] = None,
    scale: Annotated[int, typer.Option(help="Enlarge pixels by this factor.")] = 1,
    device: DeviceOpt = "auto",
):
    """Sample images from a GAN or VAE run: seeded, as a grid or separate PNGs. Without --label a
    class-conditional model cycles through its classes."""
    from genlab.generate.images import ImageGenerator, save_grid, save_separate

    if scale < 1:
        raise GenlabError(f"--scale must be at least 1 (got {scale})")
    gen = ImageGenerator.from_run(run, device=device)
    labels = gen.labels_for(n, label)
    images = gen.sample(n, labels=labels, seed=seed)
    if separate:
        paths = save_separate(images, out_path, labels, gen.class_names, scale)
        out.print(f"{len(paths)} images -> {out_path}")
    else:
        per_row = nrow or (min(gen.model.cfg.num_classes, n) if labels and label is None else 8)
        out.print(f"{n} images -> {save_grid(images, out_path, per_row, scale)}")


@app.command("animate")
def animate_cmd(
    run: RunArg,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="walk.gif or walk.mp4.")] = Path("walk.gif"),
    n: Annotated[int, typer.Option(help="Walks shown side by side in a grid.")] = 16,
    keyframes: Annotated[int, typer.Option(help="Random points each walk passes through.")] = 4,
    frames: Annotated[int, typer.Option(help="Frames from one keyframe to the next.")] = 24,
    fps: float = 12.0,
    label: LabelOpt = None,
    classes: Annotated[str, typer.Option(help="Walk between these classes instead, e.g. 'Dress,Coat,Bag'.")] = None,
    images: Annotated[list[Path], typer.Option("--images", help="VAE: walk between two real images (give twice).")] = None,
    seed: int = 0,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="Return to the start (seamless looping).")] = True,
    scale: Annotated[int, typer.Option(help="Enlarge pixels by this factor.")] = 4,
    device: DeviceOpt = "auto",
):
    """A smooth latent-space walk (spherical interpolation) as an animated GIF or MP4."""
    from genlab.generate import images as imgen

    if scale < 1:
        raise GenlabError(f"--scale must be at least 1 (got {scale})")
    gen = imgen.ImageGenerator.from_run(run, device=device)
    if images:
        imgs, labels = imgen.load_images(images, gen, label)
        seq = imgen.interpolation_frames(gen, imgs, labels, frames, loop)
    else:
        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None
        seq = imgen.walk_frames(gen, n, keyframes, frames, label, wanted, seed, loop)
    out.print(f"{len(seq)} frames -> {imgen.write_animation(seq, out_path, fps, scale)}")


@app.command("reconstruct")
def reconstruct_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained VAE.")],
    images: Annotated[list[Path], typer.Option("--images", help="Image files or folders (repeatable); default: held-out images of the run's data set.")] = None,
    n: Annotated[int, typer.Option(help="Without --images: how many held-out images.")] = 8,
    label: Annotated[str, typer.Option(help="Class of the given images (conditional VAE), by name or index; default: each image's folder name.")] = None,
    interpolate: Annotated[int, typer.Option(help="With two images: decode this many points on the latent line between them.")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG: originals above reconstructions (or the interpolation strip).")] = Path("reconstruction.png"),
    scale: Annotated[int, typer.Option(help="Enlarge pixels by this factor.")] = 1,
    device: DeviceOpt = "auto",
):
    """VAE: encode real images and decode them again, or interpolate between two through the latent space."""
    import numpy as np

    from genlab.generate.images import ImageGenerator, held_out_images, load_images, save_grid

    if scale < 1:
        raise GenlabError(f"--scale must be at least 1 (got {scale})")
    gen = ImageGenerator.from_run(run, device=device)
    gen.require_vae()  # a clear error for a GAN run before any image is read
    imgs, labels = load_images(images, gen, label) if images else held_out_images(gen, n)
    if interpolate is not None:
        strip = gen.interpolate(imgs, labels, interpolate)
        grid = np.concatenate([imgs[:1], strip, imgs[1:2]])
        out.print(f"{interpolate} interpolated images -> {save_grid(grid, out_path, len(grid), scale)}")
        return
    recon = gen.reconstruct(imgs, labels)
    # Rows of up to 8: originals, then their reconstructions right below.
    per_row = min(8, len(imgs))
    rows = [part for i in range(0, len(imgs), per_row) for part in (imgs[i: i + per_row], recon[i: i + per_row])]
    padded = [np.concatenate([r, np.zeros((per_row - len(r), *r.shape[1:]), np.uint8)]) for r in rows]
    out.print(f"{len(imgs)} reconstructions -> {save_grid(np.concatenate(padded), out_path, per_row, scale)}")


@data_app.command("prepare")
def data_prepare_cmd(data: DataOpt = None, tokenizer: TokOpt = "bpe", vocab_size: VocabOpt = 512,
                     val_fraction: float = 0.1):
    """Tokenize a corpus into cached train/validation token files (what `train lm` does first)."""
    from genlab.config import DataConfig
    from genlab.data.prepare import prepare

    p = prepare(DataConfig(corpus=data or ["fortunes"], tokenizer=tokenizer, vocab_size=vocab_size,
                           val_fraction=val_fraction), log=err.print)
    out.print_json(json.dumps({"cache": str(p.root), **p.meta}))


@generate_app.command("text")
def generate_text_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained LM.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p")] = "",
    max_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = None,
    top_p: float = None,
    repetition_penalty: float = 1.0,
    stop: Annotated[list[str], typer.Option(help="Stop when this string appears (repeatable).")] = None,
    seed: int = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come.")] = True,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Use the KV cache.")] = True,
    device: str = "auto",
):
    """Generate text from a prompt."""
    from genlab.generate.text import load_lm

    lm = load_lm(run, device=device)
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, stop=tuple(stop or ()), seed=seed, use_cache=cache)
    pieces = lm.stream(prompt, **kwargs)
    first = next(pieces, "")
    if lm.info.truncated:
        err.print(f"[yellow]note[/]: the prompt was {lm.info.prompt_tokens} tokens; kept the last "
                  f"{lm.info.prompt_tokens - lm.info.truncated} to fit the context of {lm.config.context}")
    sys.stdout.write(prompt)
    if stream:
        sys.stdout.write(first)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        sys.stdout.write(first + "".join(pieces))
    sys.stdout.write("\n")


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Held-out text (default: the run's validation split).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Score at most this many tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: str = "auto",
    n: Annotated[int, typer.Option(help="GAN/VAE: generated images for FCD and precision/recall.")] = 10_000,
    k: Annotated[int, typer.Option(help="GAN/VAE: neighbours for the precision/recall manifolds.")] = 3,
    seed: Annotated[int, typer.Option(help="GAN/VAE: sampling seed.")] = 0,
):
    """LM: perplexity and bits per byte on held-out text. GAN/VAE: FCD, precision/recall, conditional
    accuracy and (VAE) negative ELBO, in the features of genlab's own classifier."""
    from genlab.runs import read_config

    if read_config(run)["family"] in ("gan", "vae"):
        _eval_image(run, data, n, k, seed, as_json, device)
        return
    from genlab.evaluate.perplexity import evaluate_lm

    res = evaluate_lm(run, data, max_tokens=max_tokens, device=device)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(f"{res['data']}: {res['tokens']:,} tokens, loss {res['loss']:.4f}, "
                  f"perplexity {res['perplexity']:.2f}, bits/byte {res['bits_per_byte']:.4f}")


def _eval_image(run: Path, data: list[str] | None, n: int, k: int, seed: int, as_json: bool, device: str) -> None:
    from genlab.evaluate.image_metrics import evaluate_image_run, format_report

    if data:
        raise GenlabError("--data is for LM runs; a GAN/VAE run is scored on the test split of its own data set")
    res = evaluate_image_run(run, n=n, k=k, seed=seed, device=device, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(format_report(res), markup=False, highlight=False, soft_wrap=True)


classifier_app = typer.Typer(no_args_is_help=True, help="genlab's own image classifier (features for FCD, audit).")
app.add_typer(classifier_app, name="classifier")


@classifier_app.command("train")
def classifier_train_cmd(
    data: ImgDataOpt = "fashion-mnist", image_size: ImgSizeOpt = None, rgb: ImgRgbOpt = False,
    test_fraction: ImgTestFracOpt = 0.1,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if a cached one exists.")] = False,
    device: DeviceOpt = "auto",
):
    """Train (or find cached) the classifier of a data set and print its test accuracy."""
    from genlab.data.images import ImageDataConfig, load_image_data
    from genlab.evaluate.classifier import load_or_train

    dcfg = ImageDataConfig(source=data, image_size=image_size or (28 if data == "fashion-mnist" else 32),
                           channels=3 if rgb else 1, test_fraction=test_fraction)
    clf = load_or_train(load_image_data(dcfg), device=device, retrain=retrain)
    out.print(f"{data}: classifier test accuracy {clf.test_accuracy:.2%} -> {clf.path}", markup=False, soft_wrap=True)


@app.command("audit")
def audit_cmd(
    run: RunArg,
    n: Annotated[int, typer.Option(help="Unconditional samples to classify.")] = 10_000,
    seed: int = 0,
    tolerance: Annotated[float, typer.Option(help="Flag a class produced at over this many times its training "
                                                  "share, or under its inverse.")] = 1.5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: DeviceOpt = "auto",
):
    """Bias audit: the class distribution of unconditional samples against the training data's."""
    from genlab.bench import _show
    from genlab.evaluate.audit import audit_run, format_audit

    report = audit_run(run, n=n, seed=seed, tolerance=tolerance, device=device, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    _show(f"audit of {run}: {report.n_generated:,} samples", ["class", "training share", "generated share",
                                                               "ratio", "status"], format_audit(report))
    out.print(f"KL(generated || training) {report.kl_generated_train:.4f} nats, KL(training || generated) "
              f"{report.kl_train_generated:.4f} nats; classifier test accuracy {report.classifier_test_accuracy:.2%}",
              markup=False, soft_wrap=True)
    out.print(f"under-produced: {', '.join(report.under) or 'none'}; over-produced: {', '.join(report.over) or 'none'}"
              f"; dropped: {', '.join(report.dropped) or 'none'}", markup=False, soft_wrap=True)


@app.command("augment")
def augment_cmd(
    generator: Annotated[Path, typer.Option(help="Run directory of a conditional GAN or VAE.")],
    real: Annotated[str, typer.Option(help="Real images per class (comma list, e.g. 10,50,100).")] = "10,50,100",
    synthetic: Annotated[int, typer.Option(help="Generated images per class added to the real ones.")] = 100,
    seeds: Annotated[int, typer.Option(help="Seeds per setting (mean ± std).")] = 3,
    steps: Annotated[int, typer.Option(help="Classifier optimizer steps per training.")] = None,
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file (e.g. BENCHMARKS.md).")] = None,
    device: DeviceOpt = "auto",
):
    """Does generated data help a classifier trained on few real images? Test accuracy with and without."""
    from dataclasses import replace

    from genlab.bench import _markdown, _show, append_section
    from genlab.evaluate.augment import AUGMENT_CLASSIFIER, run_augmentation, table

    try:
        counts = [int(x) for x in real.split(",") if x.strip()]
    except ValueError:
        raise GenlabError(f"--real must be a comma list of numbers like 10,50,100 (got '{real}')") from None
    cfg = replace(AUGMENT_CLASSIFIER, steps=steps) if steps else AUGMENT_CLASSIFIER
    rows = run_augmentation(generator, counts, synthetic, seeds, cfg, device=device, log=err.print)
    headers, body = table(rows)
    _show(f"augmentation with {generator}", headers, body)
    append_section(write, f"Augmentation with generated images ({generator})", "genlab augment " + " ".join(sys.argv[2:]),
            _markdown(headers, body), f"Test accuracy on the whole test split; the same classifier and "
            f"{cfg.steps} steps of batch {cfg.batch_size} in both arms; mean ± std over {seeds} seeds.")


@bench_app.command("train-lm")
def bench_train_lm_cmd(
    steps: Annotated[int, typer.Option(help="Timed steps per config (after warm-up steps).")] = 10,
    configs: Annotated[str, typer.Option(help="Comma list of: tiny, small, nanogpt-cpu, base.")] = "tiny,small,nanogpt-cpu",
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """Training throughput (tokens/s) and model FLOPs utilisation against this machine's measured matmul peak."""
    from genlab.bench import bench_train_lm

    bench_train_lm([c.strip() for c in configs.split(",") if c.strip()], steps, None if no_write else write)


@bench_app.command("generate")
def bench_generate_cmd(
    lengths: Annotated[str, typer.Option(help="New-token counts.")] = "64,256,512",
    preset: str = "small",
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """Decode tokens/s with and without the KV cache."""
    from genlab.bench import bench_generate

    bench_generate([int(x) for x in lengths.split(",")], preset, None if no_write else write)


@bench_app.command("runtimes")
def bench_runtimes_cmd(
    run: Annotated[Path, typer.Argument(help="LM run (float) to quantize, export and measure.")],
    only: Annotated[str, typer.Option(help="Comma list of runtimes (pytorch, onnxruntime, executorch, litert, "
                                           "llama.cpp, transformers) or runtime:precision; default all.")] = "",
    prompt_tokens: int = 64,
    decode_tokens: int = 128,
    work: Annotated[Path, typer.Option(help="Folder for the exported variants (reused between runs).")] = None,
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """Every runtime and precision side by side: size, load, prefill, decode tok/s, memory, parity."""
    from genlab.bench import append_section
    from genlab.bench_runtimes import bench_runtimes, markdown_table

    rows = bench_runtimes(run, work, prompt_tokens, decode_tokens,
                          only=[x.strip() for x in only.split(",") if x.strip()] or None,
                          log=lambda m: err.print(m, markup=False, highlight=False))
    table = markdown_table(rows)
    out.print(table, markup=False, highlight=False, soft_wrap=True)
    if not no_write:
        cmd = f"genlab bench runtimes {run}" + (f" --only {only}" if only else "")
        append_section(write, f"Runtimes for {run.name} (`bench runtimes`)", cmd, table,
                       f"Prompt {prompt_tokens} validation tokens, then {decode_tokens} one-token decode steps "
                       f"(decode tok/s = 1 / median step time); each row measured in its own process; parity "
                       f"against PyTorch eager fp32; greedy agreement = identical leading greedy tokens; "
                       f"perplexity on the first 4,096 validation tokens.")


ImgBenchPresets = Annotated[str, typer.Option(help="Comma list of presets: tiny, small.")]
ImgBenchSteps = Annotated[int, typer.Option(help="Timed steps per preset (after warm-up steps).")]


@bench_app.command("train-gan")
def bench_train_gan_cmd(
    presets: ImgBenchPresets = "tiny,small", steps: ImgBenchSteps = 20,
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """GAN training images/s and wall time on Fashion-MNIST."""
    from genlab.bench import bench_train_image

    bench_train_image("gan", [p.strip() for p in presets.split(",") if p.strip()], steps, None if no_write else write)


@bench_app.command("train-vae")
def bench_train_vae_cmd(
    presets: ImgBenchPresets = "tiny,small", steps: ImgBenchSteps = 20,
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """VAE training images/s and wall time on Fashion-MNIST."""
    from genlab.bench import bench_train_image

    bench_train_image("vae", [p.strip() for p in presets.split(",") if p.strip()], steps, None if no_write else write)


@app.command("speak")
def speak_cmd(
    text: Annotated[str, typer.Argument(help="What to say.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="WAV file to write.")] = Path("speech.wav"),
    voice: Annotated[str, typer.Option(help="'joe' (built in) or a Piper .onnx voice file (with its .onnx.json).")] = "joe",
    speed: Annotated[float, typer.Option(help="Speaking speed (2 = twice as fast).")] = 1.0,
    backend: Annotated[str, typer.Option(help="auto (Piper, else espeak-ng), piper or espeak.")] = "auto",
    expressive: Annotated[bool, typer.Option("--expressive", help="Piper: keep the voice's random variation (not reproducible).")] = False,
):
    """Text to speech as a WAV file: a neural Piper voice, or espeak-ng."""
    from genlab.generate.speech import SpeechOptions, synthesize

    if out_path.suffix.lower() != ".wav":
        raise GenlabError(f"--out must be a .wav file (got '{out_path.name}')")
    speech = synthesize(text, SpeechOptions(voice=voice, speed=speed, backend=backend, expressive=expressive))
    speech.save(out_path)
    out.print(f"{speech.duration:.1f} s of speech ({speech.backend}, {speech.voice}) -> {out_path}")


@app.command("demo")
def demo_cmd(
    minutes: Annotated[float, typer.Option(help="LM training budget.")] = 3.0,
    image_minutes: Annotated[float, typer.Option(help="VAE training budget.")] = 1.5,
    studio: Annotated[bool, typer.Option("--studio/--no-studio", help="End with a studio bundle.")] = True,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The LM run; the others sit beside it.")] = Path("runs/demo"),
):
    """Train a small LM on fortunes and a VAE on Fashion-MNIST, generate, then make a studio bundle."""
    from genlab.demo import run_demo

    run_demo(out_dir, minutes, image_minutes, studio)


@app.command("size")
def size_cmd(
    models: Annotated[list[str], typer.Argument(help="Runs, config.json files or HF model folders, catalogue names "
                                                     "(--list) or presets; several are compared side by side.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the catalogue of named architectures.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown tables.")] = False,
    plot: Annotated[Path, typer.Option(help="Write memory against context length to this PNG.")] = None,
    context: Annotated[int, typer.Option(help="Context length in tokens (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Sequences decoded (KV cache) or trained (micro-batch) at once.")] = 1,
    kv_dtype: Annotated[str, typer.Option(help="KV cache type: fp32, fp16, bf16, fp8, q8_0, q4_0.")] = "fp16",
    hardware: Annotated[str, typer.Option(help="Device for training time and comparisons (or 'this').")] = "h100",
    tokens: Annotated[str, typer.Option(help="Training tokens D, e.g. 2e12 or 1.4T (default: Chinchilla-optimal).")] = None,
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation assumed for training time.")] = 0.4,
    measure: Annotated[bool, typer.Option("--measure", help="Run decode and training bursts of a genlab LM here; "
                                                            "print predicted against measured.")] = False,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Measure this machine (1-2 s) for the device table.")] = True,
):
    """How big a model is: parameters, memory, FLOPs, speed bounds and which devices it fits on."""
    from genlab.sizing.cli import size_command
    from genlab.sizing.report import SizeOptions, parse_count

    opts = SizeOptions(context=context, batch=batch, kv_dtype=kv_dtype, hardware=hardware,
                       tokens=parse_count(tokens) if tokens else None, mfu=mfu)
    fmt = "json" if as_json else "markdown" if markdown else "rich"
    size_command(models or [], opts, list_models=list_, fmt=fmt, plot=plot, measure=measure, probe=probe,
                 console=out, log=err)


# ---- studio: studio make, studio bench, serve ------------------------------------------------------

studio_app = typer.Typer(no_args_is_help=True, help="The content studio: prompt -> article, illustration, narration.")
app.add_typer(studio_app, name="studio")


@studio_app.command("make")
def studio_make_cmd(
    prompt: Annotated[str, typer.Argument(help="What the article is about.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder (a .zip is written beside it).")] = Path("bundle"),
    text_run: Annotated[str, typer.Option(help="Text back end: a genlab LM run, a Hugging Face model folder, or an OpenAI-compatible server URL (e.g. http://127.0.0.1:8000/v1).")] = None,
    text_model: Annotated[str, typer.Option(help="Model name on an OpenAI-compatible server (default: its first).")] = None,
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="API key for an OpenAI-compatible server.")] = None,
    image_run: Annotated[Path, typer.Option(help="GAN or VAE run for the illustration (default: runs/demo-images if present).")] = None,
    max_tokens: int = 200,
    temperature: float = 0.8,
    top_p: float = 0.95,
    top_k: int = None,
    repetition_penalty: float = 1.1,
    seed: Annotated[int, typer.Option(help="Text seed; the illustration uses seed + 1.")] = 0,
    candidates: Annotated[int, typer.Option(help="Illustration candidates; the classifier's most confident is kept.")] = 4,
    scale: Annotated[int, typer.Option(help="Enlarge the illustration's pixels by this factor.")] = 8,
    voice: Annotated[str, typer.Option(help="'joe' (built in) or a Piper .onnx voice file.")] = "joe",
    speed: Annotated[float, typer.Option(help="Narration speed.")] = 1.0,
    speech_backend: Annotated[str, typer.Option(help="auto, piper or espeak.")] = "auto",
    narrate: Annotated[bool, typer.Option("--narrate/--no-narrate")] = True,
    semantic: Annotated[bool, typer.Option("--semantic/--keywords", help="Pick the image class with the sentence-embedding model, or by keywords.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle.")] = False,
    device: DeviceOpt = "auto",
):
    """Make a bundle from a prompt: article, illustration, narration, index.html, manifest.json and a .zip."""
    from genlab.generate.speech import SpeechOptions
    from genlab.studio.pipeline import StudioRequest, load_studio

    req = StudioRequest(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                        repetition_penalty=repetition_penalty, seed=seed, candidates=candidates,
                        image_scale=scale, narrate=narrate,
                        speech=SpeechOptions(voice=voice, speed=speed, backend=speech_backend))
    req.validate()
    studio = load_studio(text_run, image_run, text_model=text_model, api_key=api_key, device=device,
                         semantic_labels=semantic)

    def progress(ev: dict) -> None:
        if ev["event"] == "stage":
            extra = ", ".join(f"{k} {v}" for k, v in ev.items() if k not in ("event", "stage", "status"))
            err.print(f"[bold]{ev['stage']:>12}[/] {ev['status']}{' (' + extra + ')' if extra else ''}")

    bundle = studio.make(req, out_path, progress, overwrite=overwrite)
    out.print(f"bundle -> {bundle.folder}  (zip: {bundle.zip_path}; open {bundle.folder / 'index.html'})")


# ---- shrink: quantize, distill ------------------------------------------------------------------

@app.command("quantize")
def quantize_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained LM.")],
    method: Annotated[str, typer.Option(help="int8 (weight-only, per channel), int4 (weight-only, group-wise) "
                                             "or dynamic-int8 (int8 kernels for CPU inference).")] = "int8",
    group_size: Annotated[int, typer.Option(help="int4: weights per scale.")] = 32,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the quantized model.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
):
    """Quantize an LM's embedding and linear layers into a new run (generate and eval it like any run)."""
    from genlab.optimize.quantize import QuantSpec, quantize_run

    target = out_dir or run.with_name(f"{run.name}-{method}")
    res = quantize_run(run, target, QuantSpec(method=method, group_size=group_size), overwrite=overwrite)
    out.print(f"{res['method']}: model.safetensors {res['bytes_before'] / 1e6:.2f} MB -> "
              f"{res['bytes_after'] / 1e6:.2f} MB ({res['ratio']:.1f}x smaller) -> {res['run']}")


@app.command("distill")
def distill_cmd(
    teacher: Annotated[Path, typer.Option(help="Run directory of the (larger) teacher LM.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the student.")] = None,
    preset: Annotated[str, typer.Option(help="Student preset: tiny, small or base.")] = "tiny",
    alpha: Annotated[float, typer.Option(help="Weight of the distillation term (0: plain training, the baseline).")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the distillation term.")] = 2.0,
    steps: Annotated[int, typer.Option(help="Budget in optimizer steps.")] = None,
    minutes: Annotated[float, typer.Option(help="Budget in wall-clock minutes (whichever ends first).")] = None,
    batch_size: int = None, grad_accum: int = None, lr: float = None, warmup: int = None,
    weight_decay: float = None, grad_clip: float = None, eval_every: int = None, eval_batches: int = None,
    checkpoint_every: int = None, log_every: int = None, seed: int = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (autocast).")] = "auto",
    context: Annotated[int, typer.Option(help="Student context (default: the teacher's).")] = None,
    n_layer: int = None, n_head: int = None, n_kv_head: int = None, d_model: int = None, ffn_hidden: int = None,
    tie_embeddings: Annotated[bool, typer.Option("--tie-embeddings/--no-tie-embeddings")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the student in --out where it stopped.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
):
    """Distill a smaller LM from a trained one (same tokenizer and data), through the shared trainer."""
    from genlab.config import LM_PRESETS, train_config
    from genlab.optimize.distill import DistillSpec, distill

    if preset not in LM_PRESETS:
        raise GenlabError(f"unknown preset '{preset}'; choose one of: {', '.join(LM_PRESETS)}")
    if out_dir is None:
        raise GenlabError("give the student's run directory: --out RUN")
    tcfg = train_config(
        preset, steps=steps, minutes=minutes, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup, weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every,
        eval_batches=eval_batches, checkpoint_every=checkpoint_every, log_every=log_every, seed=seed,
        device=device, dtype=dtype)
    overrides = dict(context=context, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=d_model,
                     ffn_hidden=ffn_hidden, tie_embeddings=tie_embeddings)
    result = distill(DistillSpec(run=out_dir, teacher=teacher, preset=preset, train=tcfg, alpha=alpha,
                                 temperature=temperature, resume=resume, overwrite=overwrite, quiet=quiet,
                                 model_overrides={k: v for k, v in overrides.items() if v is not None}))
    if not quiet:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        err.print(f"[green]done[/]: step {result.step}, train loss {result.train_loss:.4f}"
                  f"{', val ' + val if val else ''} -> {out_dir}")


# ---- ship: export, import -----------------------------------------------------------------------

import_app = typer.Typer(no_args_is_help=True, help="Bring a model from another format into a genlab run.")
app.add_typer(import_app, name="import")
# format -> families it takes; image models export their generator (GAN) or decoder (VAE)
EXPORT_FORMATS = {"hf": ("lm",), "onnx": ("lm", "gan", "vae"), "gguf": ("lm",), "executorch": ("lm", "gan", "vae"),
                  "tflite": ("lm", "gan", "vae"), "coreml": ("lm", "gan", "vae")}
INT8_FORMATS = ("onnx", "executorch", "tflite")


def _default_export_path(run: Path, fmt: str, int8: bool, gguf_type: str, compress: str | None) -> Path:
    suffix = "-int8" if int8 else ""
    names = {"hf": f"{run.name}-hf", "onnx": f"{run.name}{suffix}.onnx", "gguf": f"{run.name}-{gguf_type}.gguf",
             "executorch": f"{run.name}-executorch{suffix}", "tflite": f"{run.name}-tflite{suffix}",
             "coreml": f"{run.name}-coreml{'-' + compress if compress else ''}"}
    return run.with_name(names[fmt])


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained (or quantized) LM, GAN or VAE.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="hf, onnx, gguf, executorch, tflite or coreml "
                                                            "(see docs/export.md).")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Folder (hf, executorch, tflite, coreml), "
                                                               ".onnx or .gguf file.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="onnx, executorch, tflite: int8 weights "
                                                      "(dynamic int8 matrix products).")] = False,
    gguf_type: Annotated[str, typer.Option("--type", help="gguf: f16 or q8_0.")] = "f16",
    compress: Annotated[str, typer.Option("--compress", help="coreml: palettize4, palettize6 or int8 "
                                                             "weight compression.")] = None,
    stateful: Annotated[bool, typer.Option("--stateful", help="coreml: keep the LM's KV cache as Core ML "
                                                              "state (iOS 18).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
):
    """Export a model; a parity check against PyTorch runs at the end and prints the largest difference."""
    if fmt not in EXPORT_FORMATS:
        raise GenlabError(f"give --format: one of {', '.join(EXPORT_FORMATS)}" if fmt is None else
                          f"unknown format '{fmt}'; choose one of: {', '.join(EXPORT_FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise GenlabError(f"--int8 applies to --format {', '.join(INT8_FORMATS)} "
                          f"(gguf: --type q8_0; coreml: --compress int8)")
    if (compress or stateful) and fmt != "coreml":
        raise GenlabError(f"{'--compress' if compress else '--stateful'} applies to --format coreml only")
    from genlab.runs import read_config

    family = read_config(run)["family"]
    if family not in EXPORT_FORMATS[fmt]:
        other = ", ".join(f for f, fams in EXPORT_FORMATS.items() if family in fams)
        raise GenlabError(f"{fmt} export is for language models; '{run}' holds a {family} model "
                          f"(export it with --format {other})")
    log = lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    target = out_path or _default_export_path(run, fmt, int8, gguf_type, compress)
    if fmt == "hf":
        from genlab.export.hf import export_hf

        export_hf(run, target, overwrite=overwrite, log=log)
    elif fmt == "onnx":
        from genlab.export.onnx import export_onnx

        export_onnx(run, target, int8=int8, overwrite=overwrite, log=log)
    elif fmt == "gguf":
        from genlab.export.gguf import export_gguf

        export_gguf(run, target, gguf_type, overwrite=overwrite, log=log)
    elif fmt == "executorch":
        from genlab.export.executorch import export_executorch

        export_executorch(run, target, int8=int8, overwrite=overwrite, log=log)
    elif fmt == "tflite":
        from genlab.export.tflite import export_tflite

        export_tflite(run, target, int8=int8, overwrite=overwrite, log=log)
    else:
        from genlab.export.coreml import export_coreml

        export_coreml(run, target, compress=compress, stateful=stateful, overwrite=overwrite, log=log)
    out.print(f"{fmt} -> {target}")


@import_app.command("hf")
def import_hf_cmd(
    src: Annotated[Path, typer.Argument(help="Local Hugging Face Llama folder (config.json, safetensors, tokenizer.json).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")] = None,
    context: Annotated[int, typer.Option(help="Cap the context (default: max_position_embeddings); "
                                              "generation allocates a KV cache this long.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
):
    """Import a Llama-family checkpoint as a genlab run (generate with it, or fine-tune with --init-from)."""
    from genlab.export.hf import import_hf

    if out_dir is None:
        raise GenlabError("give the run directory to create: --out RUN")
    import_hf(src, out_dir, context=context, overwrite=overwrite,
              log=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True))
    out.print(f"imported {src} -> {out_dir}")


@studio_app.command("bench")
def studio_bench_cmd(
    text_run: Annotated[Path, typer.Option(help="LM run to serve.")] = Path("runs/demo"),
    levels: Annotated[str, typer.Option(help="Concurrent streaming clients per level (1 = one at a time).")] = "1,4,16",
    requests: Annotated[int, typer.Option(help="Requests per client per level.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per request (end-of-text ignored).")] = 64,
    max_batch: int = 16,
    device: DeviceOpt = "auto",
):
    """Load-test `genlab serve` on 127.0.0.1: throughput and p50/p95 latency per concurrency level."""
    from genlab.studio.bench import bench_serve, markdown_table

    try:
        wanted = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise GenlabError(f"--levels must be numbers separated by commas (got '{levels}')") from None
    out.print(markdown_table(bench_serve(text_run, wanted, requests, max_tokens, max_batch, device)))


@app.command("serve")
def serve_cmd(
    text_run: Annotated[Path, typer.Option(help="LM run for /v1/completions, chat and the studio.")] = Path("runs/demo"),
    image_run: Annotated[Path, typer.Option(help="GAN or VAE run for /v1/images and illustrations (default: runs/demo-images if present).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the server private to this machine.")] = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[str, typer.Option(envvar="GENLAB_API_KEY", help="Require 'Authorization: Bearer KEY' (also GENLAB_API_KEY).")] = None,
    data_dir: Annotated[Path, typer.Option(help="Studio history (SQLite) and bundles.")] = Path("runs/studio"),
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together (dynamic batching).")] = 16,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1_000_000,
    speech_backend: Annotated[str, typer.Option(help="auto, piper or espeak.")] = "auto",
    device: DeviceOpt = "auto",
):
    """Serve the models: OpenAI-compatible API, studio jobs and the web page at /."""
    from genlab.studio.pipeline import DEFAULT_IMAGE_RUN
    from genlab.studio.server import ServerConfig, serve

    if max_batch < 1 or max_tokens_limit < 1 or max_body_bytes < 1024:
        raise GenlabError("--max-batch and --max-tokens-limit must be positive, --max-body-bytes at least 1024")
    if image_run is None and DEFAULT_IMAGE_RUN.exists():
        image_run = DEFAULT_IMAGE_RUN
    serve(ServerConfig(text_run=text_run, image_run=image_run, data_dir=data_dir, host=host, port=port,
                       api_key=api_key or None, max_batch=max_batch, max_tokens_limit=max_tokens_limit,
                       max_body_bytes=max_body_bytes, device=device, speech_backend=speech_backend),
          log=err.print)


def main() -> None:
    from genlab.train.trainer import Interrupted

    try:
        app()
    except Interrupted as e:
        err.print(f"[yellow]interrupted[/]: {e}")
        sys.exit(130)
    except GenlabError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
