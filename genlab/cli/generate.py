"""`genlab generate text|image|music`, `genlab animate`, `genlab reconstruct`, `genlab upscale`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import comma_list, err, out
from genlab.cli.music import generate_music_cmd
from genlab.cli.options import DeviceOpt, FastOpt, ImageRunArg, LabelOpt, ScaleOpt
from genlab.cli.safety import WatermarkOpt, text_watermark
from genlab.errors import GenlabError

app = typer.Typer(no_args_is_help=True, help="Generate with a trained run.")
app.command("music")(generate_music_cmd)  # genlab/cli/music.py


def _check_scale(scale: int) -> None:
    if scale < 1:
        raise GenlabError(f"--scale must be at least 1 (got {scale})")


@app.command("image")
def generate_image_cmd(
    run: ImageRunArg,
    n: Annotated[int, typer.Option(help="How many images.")] = 64,
    label: LabelOpt = None,
    seed: int = 0,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG grid, or a folder with --separate.")] = Path("grid.png"),
    separate: Annotated[bool, typer.Option("--separate", help="One PNG per image in the --out folder.")] = False,
    nrow: Annotated[int, typer.Option(help="Images per grid row (default: the number of classes, or 8).")] = None,
    scale: ScaleOpt = 1,
    device: DeviceOpt = "auto",
    watermark: Annotated[str, typer.Option("--watermark", metavar="KEY", help="Mark every saved picture with this "
                                           "key (invisible-watermark; pictures of 256x256 pixels or more).")] = None,
):
    """Sample images from a GAN or VAE run: seeded, as a grid or separate PNGs. Without --label a
    class-conditional model cycles through its classes."""
    from genlab.generate.images import ImageGenerator, save_grid, save_separate

    _check_scale(scale)
    mark = None
    if watermark is not None:
        from genlab.safety.watermark_image import ImageWatermark

        mark = ImageWatermark(watermark).embed
    gen = ImageGenerator.from_run(run, device=device)
    labels = gen.labels_for(n, label)
    images = gen.sample(n, labels=labels, seed=seed)
    if separate:
        paths = save_separate(images, out_path, labels, gen.class_names, scale, mark=mark)
        out.print(f"{len(paths)} images -> {out_path}")
    else:
        per_row = nrow or gen.grid_columns(n, cycling=bool(labels) and label is None)
        out.print(f"{n} images -> {save_grid(images, out_path, per_row, scale, mark=mark)}")


@app.command("text")
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
    fast: FastOpt = True,
    watermark: WatermarkOpt = None,
):
    """Generate text from a prompt."""
    from genlab.generate.text import clean_text, load_lm

    lm = load_lm(run, device=device, fast=fast)
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, stop=tuple(stop or ()), seed=seed, use_cache=cache,
                  watermark=text_watermark(watermark))
    pieces = lm.stream(prompt, **kwargs)
    first = next(pieces, "")
    if lm.info.truncated:
        err.print(f"[yellow]note[/]: the prompt was {lm.info.prompt_tokens} tokens; kept the last "
                  f"{lm.info.prompt_tokens - lm.info.truncated} to fit the context of {lm.config.context}")
    sys.stdout.write(clean_text(prompt))  # bytes that are not UTF-8 print as U+FFFD, as the model saw them
    if stream:
        sys.stdout.write(first)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        sys.stdout.write(first + "".join(pieces))
    sys.stdout.write("\n")


def animate_cmd(
    run: ImageRunArg,
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
    scale: Annotated[int, typer.Option(help="Enlarge the frames by this factor (nearest neighbour, or --upscale).")] = 4,
    upscale: Annotated[Path, typer.Option("--upscale", help="Enlarge with this upscale run instead (applied as often "
                                          "as its scale fits into --scale, bicubic for the rest).")] = None,
    device: DeviceOpt = "auto",
):
    """A smooth latent-space walk (spherical interpolation) as an animated GIF or MP4."""
    from genlab.generate import images as imgen

    _check_scale(scale)
    enlarge = None
    if upscale is not None:
        from genlab.generate.upscale import ImageUpscaler

        upscaler = ImageUpscaler.from_run(upscale, device=device)
        enlarge = lambda frame: upscaler.enlarge(frame, scale)  # noqa: E731
    gen = imgen.ImageGenerator.from_run(run, device=device)
    if images:
        imgs, labels = imgen.load_images(images, gen, label)
        seq = imgen.interpolation_frames(gen, imgs, labels, frames, loop)
    else:
        wanted = comma_list(classes) if classes is not None else None
        seq = imgen.walk_frames(gen, n, keyframes, frames, label, wanted, seed, loop)
    out.print(f"{len(seq)} frames -> {imgen.write_animation(seq, out_path, fps, scale, enlarge=enlarge)}")


def reconstruct_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained VAE.")],
    images: Annotated[list[Path], typer.Option("--images", help="Image files or folders (repeatable); default: held-out images of the run's data set.")] = None,
    n: Annotated[int, typer.Option(help="Without --images: how many held-out images.")] = 8,
    label: Annotated[str, typer.Option(help="Class of the given images (conditional VAE), by name or index; default: each image's folder name.")] = None,
    interpolate: Annotated[int, typer.Option(help="With two images: decode this many points on the latent line between them.")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG: originals above reconstructions (or the interpolation strip).")] = Path("reconstruction.png"),
    scale: ScaleOpt = 1,
    device: DeviceOpt = "auto",
):
    """VAE: encode real images and decode them again, or interpolate between two through the latent space."""
    from genlab.generate.images import (
        ImageGenerator,
        held_out_images,
        interpolation_strip,
        load_images,
        reconstruction_grid,
        save_grid,
    )

    _check_scale(scale)
    gen = ImageGenerator.from_run(run, device=device)
    gen.require_vae()  # a clear error for a GAN run before any image is read
    imgs, labels = load_images(images, gen, label) if images else held_out_images(gen, n)
    if interpolate is not None:
        strip = interpolation_strip(imgs, gen.interpolate(imgs, labels, interpolate))
        out.print(f"{interpolate} interpolated images -> {save_grid(strip, out_path, len(strip), scale)}")
        return
    grid, per_row = reconstruction_grid(imgs, gen.reconstruct(imgs, labels))
    out.print(f"{len(imgs)} reconstructions -> {save_grid(grid, out_path, per_row, scale)}")


def upscale_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained upscaler (genlab train upscale), or its "
                                             "ONNX export (genlab export RUN --format onnx).")],
    input_path: Annotated[Path, typer.Argument(metavar="IN", help="A .png, .jpg, .gif or .mp4 file.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write: the same kind of file as IN.")],
    scale: Annotated[int, typer.Option(help="Enlargement: the run's scale (default) or a power of it (the run "
                                            "applied repeatedly).")] = None,
    device: DeviceOpt = "auto",
):
    """Enlarge a picture, GIF or MP4 with a super-resolution run, frame by frame (GIF frame durations and
    loop, MP4 frame rate and audio kept). A grayscale run enlarges a colour picture's luma (chroma by
    bicubic)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from genlab.generate.upscale import ImageUpscaler, kind_of, upscale_file

    kind_of(input_path, "input")  # a wrong extension fails before the model is loaded
    kind_of(out_path, "--out")
    up = ImageUpscaler.from_run(run, device=device)
    if scale is not None:
        if scale < 2 or up.plan(scale)[1]:
            raise GenlabError(f"run '{run}' was trained to enlarge {up.scale}x; --scale {scale} is not "
                              f"{up.scale} or a power of it ({up.scale ** 2}, {up.scale ** 3}, ...); leave --scale out, or "
                              f"train a run for that factor (genlab train upscale --scale 2|4)")
    with Progress(TextColumn("[bold blue]upscale"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("frames", total=None)
        res = upscale_file(up, input_path, out_path, scale,
                           progress=lambda done, total: bar.update(task, completed=done, total=total))
    timing = ""
    if res.kind == "mp4":
        timing = f", {res.timing['fps']:g} fps{' (audio copied)' if res.timing['audio'] else ''}"
    elif res.kind == "gif":
        d = res.timing["durations_ms"]
        timing = f", {min(d)}-{max(d)} ms per frame" if min(d) != max(d) else f", {d[0]} ms per frame"
    out.print(f"{res.frames} frame(s) {res.in_size[0]}x{res.in_size[1]} -> {res.out_size[0]}x{res.out_size[1]}"
              f"{timing} in {res.seconds:.2f} s ({res.frames_per_second:.1f} frames/s) -> {res.output}",
              highlight=False)
