"""A procedurally drawn colour data set, written as a folder of class sub-folders of PNGs.

It exists so the RGB image presets (32 and 64 px) can be trained and measured on something that
ships with genlab, the way Fashion-MNIST serves the grayscale ones. A class is a shape in a palette:
four shapes (disc, square, triangle, star) times two hue bands (warm: red to orange; cool: blue to
cyan), eight classes. Neither the colour nor the form alone names the class, so a classifier trained
on the folder has to look at both (its features then carry both into FCD), and a class-conditional
model has to get both right to be scored correct.

Within a class the images vary in position, size, rotation, hue (inside the band), saturation and
brightness, and a two-colour gradient background in a random direction. Shapes are drawn at 4x and
shrunk with a Lanczos filter, so edges are anti-aliased as in photos.

``genlab data draw --out FOLDER`` writes it; the folder then goes to ``--data FOLDER`` like any other.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genlab.errors import ConfigError, DataError

SHAPES = ("disc", "square", "triangle", "star")
PALETTES = (("warm", 0.04), ("cool", 0.58))  # (name, hue centre in [0, 1))
HUE_JITTER = 0.05  # +- around the palette's centre: the two bands stay far apart
# (class name, shape, hue centre), e.g. ("warm-disc", "disc", 0.04)
CLASSES: tuple[tuple[str, str, float], ...] = tuple(
    (f"{palette}-{shape}", shape, hue) for palette, hue in PALETTES for shape in SHAPES)
SUPERSAMPLE = 4


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """A linear gradient between two dark, low-saturation colours, in a random direction."""
    c0 = np.array(_rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.08, 0.4)), dtype=np.float32)
    c1 = np.array(_rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.08, 0.4)), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1) - 0.5
    t = np.clip(xs * math.cos(angle) + ys * math.sin(angle) + 0.5, 0.0, 1.0)[..., None]
    return Image.fromarray((c0 * (1 - t) + c1 * t).round().astype(np.uint8), "RGB")


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.cos(angle + 2 * math.pi * i / n), cy + r * math.sin(angle + 2 * math.pi * i / n))
            for i, r in enumerate(radii)]


def draw_image(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``label`` (index into CLASSES), ``size`` pixels square."""
    side = size * SUPERSAMPLE
    im = _background(rng, side)
    draw = ImageDraw.Draw(im)
    _, shape, hue = CLASSES[label]
    fill = _rgb(hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    r = rng.uniform(0.2, 0.38) * side
    cx, cy = rng.uniform(r, side - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=fill)
    else:  # a five-pointed star
        draw.polygon(_polygon(cx, cy, [r, r * 0.42] * 5, angle), fill=fill)
    return im.resize((size, size), Image.Resampling.LANCZOS)


def write_drawn_folder(out: Path, size: int = 64, per_class: int = 1000, seed: int = 0,
                       overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``per_class`` images of each class under ``out/<class>/NNNNN.png``.

    Written into a sibling temporary folder and renamed at the end, so an interrupted run leaves no
    half-filled data set. An existing non-empty ``out`` is refused unless ``overwrite``."""
    if size < 8:
        raise ConfigError(f"--size must be at least 8 pixels (got {size})")
    if per_class <= 0:
        raise ConfigError(f"--per-class must be positive (got {per_class})")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise DataError(f"'{out}' already exists and is not empty; give --overwrite or another --out")
    tmp = out.with_name(f".{out.name}.drawing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        total, done = per_class * len(CLASSES), 0
        # Interleave the classes, so every class's images come from the same stretch of the stream.
        for i in range(per_class):
            for label, (name, _, _) in enumerate(CLASSES):
                folder = tmp / name
                folder.mkdir(exist_ok=True)
                draw_image(label, size, rng).save(folder / f"{i:05d}.png", optimize=False)
                done += 1
                if progress:
                    progress(done, total)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": str(out), "classes": [c for c, _, _ in CLASSES], "per_class": per_class,
            "images": per_class * len(CLASSES), "size": size, "seed": seed}
