"""Images from a trained GAN or VAE: seeded samples, grids, latent-space walks as GIF/MP4, and the
VAE's reconstructions and interpolations between real images.

Both families honour one sampling contract (see genlab.models.gan / vae): ``latent_dim``,
``class_embedding(labels)`` and ``generate(z, emb)`` -> images in [0, 1]. A class walk blends label
embeddings, so every in-between frame is a real input the model can render.

Reproducibility: noise is drawn on the CPU from a generator seeded by ``seed``, so the same seed
gives the same images (bit-for-bit on the same machine and device).
"""

from __future__ import annotations

import io
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab import runs
from genlab.data.images import ImageDataConfig, load_image_data, load_image_file, resolve_label
from genlab.device import pick_device
from genlab.errors import ConfigError, DataError, RunError
from genlab.models.gan import GAN, GANConfig
from genlab.models.vae import VAE, VAEConfig

IMAGE_FAMILIES = {"gan": (GAN, GANConfig), "vae": (VAE, VAEConfig)}
ANIMATION_SUFFIXES = (".gif", ".mp4")


class ImageGenerator:
    """A GAN (its EMA generator) or a VAE (its decoder), with the class names it was trained on."""

    def __init__(self, model: GAN | VAE, class_names: list[str], run_config: dict | None = None) -> None:
        self.model = model
        self.class_names = list(class_names)
        self.run_config = run_config or {}

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> ImageGenerator:
        cfg = runs.read_config(run)
        if cfg["family"] not in IMAGE_FAMILIES:
            raise RunError(f"run '{run}' holds a {cfg['family']} model, not an image model (gan or vae)")
        model_cls, cfg_cls = IMAGE_FAMILIES[cfg["family"]]
        model = model_cls(cfg_cls.from_dict(cfg["model"]))
        runs.load_weights(run, model)  # weights of other shapes are a RunError there
        model.to(pick_device(device)).eval()
        return cls(model, cfg["data"]["class_names"], cfg)

    @property
    def family(self) -> str:
        return "gan" if isinstance(self.model, GAN) else "vae"

    @property
    def conditional(self) -> bool:
        return self.model.cfg.num_classes > 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def label_index(self, label: str | int) -> int:
        if not self.conditional:
            raise ConfigError("this model was trained without labels (unconditional); drop --label")
        return resolve_label(label, self.class_names)

    def labels_for(self, n: int, labels: str | int | list | None) -> list[int] | None:
        """One class index per image: a single label for all, a list, or (None) cycling through the classes."""
        if not self.conditional:
            if labels is not None:
                self.label_index(labels if not isinstance(labels, list) else labels[0])
            return None
        if labels is None:
            return [i % self.model.cfg.num_classes for i in range(n)]
        if isinstance(labels, list):
            if len(labels) != n:
                raise ConfigError(f"got {len(labels)} labels for {n} images")
            return [self.label_index(x) for x in labels]
        return [self.label_index(labels)] * n

    def embedding(self, labels: list[int] | None) -> torch.Tensor | None:
        if labels is None:
            return None
        with torch.no_grad():
            return self.model.class_embedding(torch.tensor(labels, device=self.device))

    def noise(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, self.model.latent_dim, generator=gen).to(self.device)

    def render(self, z: torch.Tensor, emb: torch.Tensor | None) -> np.ndarray:
        """uint8 (N, C, H, W) images from latents and label embeddings (in chunks, to bound memory)."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(z), 256):
            x = self.model.generate(z[i: i + 256], None if emb is None else emb[i: i + 256])
            out.append(to_uint8(x))
        self.model.train(was_training)
        return np.concatenate(out)

    def grid_columns(self, n: int, cycling: bool) -> int:
        """Images per grid row for ``n`` samples: one column per class when the labels cycle through the
        classes (each column then holds one class), else 8."""
        return min(self.model.cfg.num_classes, n) if cycling else 8

    def sample(self, n: int, labels: str | int | list | None = None, seed: int = 0) -> np.ndarray:
        if n <= 0:
            raise ConfigError(f"--n must be positive (got {n})")
        return self.render(self.noise((n,), seed), self.embedding(self.labels_for(n, labels)))

    # ---- VAE: through the encoder ----

    def require_vae(self) -> VAE:
        if not isinstance(self.model, VAE):
            raise RunError(f"this needs a VAE run; this run holds a {self.family} model (no encoder)")
        return self.model

    def encode(self, images: np.ndarray, labels: list[int] | None) -> torch.Tensor:
        """Posterior means for uint8 (N, C, H, W) images."""
        vae = self.require_vae()
        x = torch.from_numpy(images).float().div(255).to(self.device)
        with torch.no_grad():
            mu, _ = vae.encode(x, None if labels is None else torch.tensor(labels, device=self.device))
        return mu

    def reconstruct(self, images: np.ndarray, labels: list[int] | None) -> np.ndarray:
        return self.render(self.encode(images, labels), self.embedding(labels))

    def interpolate(self, images: np.ndarray, labels: list[int] | None, steps: int) -> np.ndarray:
        """``steps`` decoded points on the line between the encodings of two images (ends included).
        Linear, not spherical: posterior means do not lie on the prior's shell as samples do."""
        if len(images) != 2:
            raise ConfigError(f"interpolation needs exactly two images (got {len(images)})")
        if steps < 2:
            raise ConfigError(f"--interpolate needs at least 2 steps (got {steps})")
        mu = self.encode(images, labels)
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]
        z = torch.lerp(mu[0:1], mu[1:2], t)
        emb = self.embedding(labels)
        return self.render(z, None if emb is None else torch.lerp(emb[0:1], emb[1:2], t))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation row by row: Gaussian latents live near a sphere, and a straight line
    between two of them cuts through its low-norm inside, where samples look washed out."""
    dot = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))
    omega = torch.arccos(dot.clamp(-1.0, 1.0))
    so = torch.sin(omega)
    safe = so.abs() > 1e-6
    mixed = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.where(safe, so, 1.0)
    return torch.where(safe, mixed, torch.lerp(a, b, t))


# ---- grids and files -----------------------------------------------------------------------------

def make_grid(images: np.ndarray, nrow: int, pad: int = 2, pad_value: int = 128) -> np.ndarray:
    """uint8 (N, C, H, W) -> one (H', W', C) image, ``nrow`` images per row, separated by ``pad`` px."""
    n, c, h, w = images.shape
    ncol = max(1, min(nrow, n))
    rows = math.ceil(n / ncol)
    grid = np.full((pad + rows * (h + pad), pad + ncol * (w + pad), c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y: y + h, x: x + w] = images[i].transpose(1, 2, 0)
    return grid


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, C) image: small samples stay crisp."""
    return image if scale == 1 else image.repeat(scale, axis=0).repeat(scale, axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, C) uint8 as PNG; a fixed encoder setting keeps the bytes reproducible."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def label_rows(picture: np.ndarray, names: list[str], pad: int = 2) -> np.ndarray:
    """The grid with a margin on its left that names each of its rows (white on black, Pillow's
    built-in font), so a reader can check each row against the class it was asked for."""
    from PIL import ImageDraw, ImageFont

    height, _, channels = picture.shape
    row_h = (height - pad) / len(names)
    font = ImageFont.load_default(size=max(10, min(int(row_h * 0.5), 18)))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 8 + max(int(probe.textlength(n, font=font)) for n in names)
    strip = Image.new("L", (margin, height), 0)
    draw = ImageDraw.Draw(strip)
    for r, name in enumerate(names):
        draw.text((4, pad + (r + 0.5) * row_h), name, fill=255, font=font, anchor="lm")
    left = np.repeat(np.asarray(strip)[..., None], channels, axis=2)
    return np.concatenate([left, picture], axis=1)


def save_grid(images: np.ndarray, path: str | Path, nrow: int = 8, scale: int = 1,
              mark: Callable[[np.ndarray], np.ndarray] | None = None, row_labels: list[str] | None = None) -> Path:
    """``mark``: applied to the enlarged picture before it is written (e.g. an image watermark).
    ``row_labels``: a name for each row, written in a left margin."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file (got '{path.name}')")
    picture = upscale(make_grid(images, nrow), scale)
    if row_labels:
        picture = label_rows(picture, row_labels)
    runs.atomic_write_bytes(path, png_bytes(mark(picture) if mark else picture))
    return path


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray,
                        per_row: int = 8) -> tuple[np.ndarray, int]:
    """Rows of up to ``per_row`` originals, each row with their reconstructions right below it; a short last
    pair of rows is padded with black so every reconstruction sits under its original.
    Returns the images and the row length to lay them out with (``make_grid``, ``save_grid``)."""
    per_row = min(per_row, len(originals))
    rows = [part for i in range(0, len(originals), per_row)
            for part in (originals[i: i + per_row], reconstructions[i: i + per_row])]
    padded = [np.concatenate([r, np.zeros((per_row - len(r), *r.shape[1:]), np.uint8)]) for r in rows]
    return np.concatenate(padded), per_row


def interpolation_strip(ends: np.ndarray, between: np.ndarray) -> np.ndarray:
    """One row: the first of two images, the points decoded between them, then the second."""
    return np.concatenate([ends[:1], between, ends[1:2]])


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"


def save_separate(images: np.ndarray, folder: str | Path, labels: list[int] | None,
                  class_names: list[str], scale: int = 1,
                  mark: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Path]:
    """One PNG per image: 000.png, or 000-dress.png when the image has a label."""
    folder = Path(folder)
    if folder.suffix.lower() == ".png":
        raise ConfigError(f"with --separate, --out is a folder, not a file (got '{folder}')")
    paths = []
    for i, img in enumerate(images):
        name = f"{i:03d}" + (f"-{slug(class_names[labels[i]])}" if labels is not None else "") + ".png"
        paths.append(folder / name)
        picture = upscale(img.transpose(1, 2, 0), scale)
        runs.atomic_write_bytes(paths[-1], png_bytes(mark(picture) if mark else picture))
    return paths


# ---- animations ----------------------------------------------------------------------------------

def walk_frames(gen: ImageGenerator, n: int = 16, keyframes: int = 4, frames: int = 24,
                labels: str | int | list | None = None, classes: list[str | int] | None = None,
                seed: int = 0, loop: bool = True) -> list[np.ndarray]:
    """A latent walk of ``n`` samples shown as a grid, one (H, W, C) image per frame.

    Between samples (default): each sample's z moves along great circles through ``keyframes``
    random points, its label held. Between classes (``classes``): each sample keeps its z while the
    label embedding blends from class to class. ``frames`` per transition; with ``loop`` the walk
    returns to its start, so a looping GIF has no jump."""
    if n <= 0 or frames <= 0:
        raise ConfigError("--n and --frames must be positive")
    if classes is not None:
        if not gen.conditional:
            raise ConfigError("this model was trained without labels; a walk between classes needs a "
                              "class-conditional model (drop --classes)")
        idx = [gen.label_index(c) for c in classes]
        if len(idx) < 2:
            raise ConfigError("--classes needs at least two classes, e.g. --classes Dress,Coat,Bag")
        z = gen.noise((n,), seed)
        keys = [gen.embedding([i] * n) for i in idx]
        blend = lambda a, b, t: (z, torch.lerp(a, b, t))  # noqa: E731
    else:
        if keyframes < 2:
            raise ConfigError(f"--keyframes must be at least 2 (got {keyframes})")
        keys = list(gen.noise((keyframes, n), seed))
        emb = gen.embedding(gen.labels_for(n, labels))
        blend = lambda a, b, t: (slerp(a, b, t), emb)  # noqa: E731
    hops = list(zip(keys, keys[1:] + keys[:1], strict=True)) if loop else list(zip(keys, keys[1:], strict=False))
    steps = [(a, b, f / frames) for a, b in hops for f in range(frames)]
    if not loop:
        steps.append((keys[-2], keys[-1], 1.0))  # end exactly on the last keyframe
    nrow = math.ceil(math.sqrt(n))
    return [make_grid(gen.render(*blend(a, b, t)), nrow) for a, b, t in steps]


def interpolation_frames(gen: ImageGenerator, images: np.ndarray, labels: list[int] | None,
                         frames: int = 24, loop: bool = True) -> list[np.ndarray]:
    """A VAE walk from one real image's encoding to another's (and back, with ``loop``)."""
    strip = gen.interpolate(images, labels, frames + 1)
    seq = list(strip) + (list(strip[-2:0:-1]) if loop else [])
    return [img.transpose(1, 2, 0) for img in seq]


def write_animation(frames: list[np.ndarray], path: str | Path, fps: float = 12.0, scale: int = 1,
                    enlarge: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """Frames as an animated GIF (looping) or an H.264 MP4, chosen by the file suffix; written atomically.
    ``enlarge``: how each frame is enlarged (an upscale run's ``enlarge``), instead of nearest-neighbour ``scale``."""
    import imageio.v2 as iio2
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise ConfigError(f"--out must end in .gif or .mp4 (got '{path.name}')")
    if fps <= 0:
        raise ConfigError(f"--fps must be positive (got {fps})")
    big = (enlarge(f) for f in frames) if enlarge is not None else (upscale(f, scale) for f in frames)
    rgb = [np.repeat(f, 3, axis=2) if f.shape[2] == 1 else f for f in big]
    if suffix == ".gif":
        buf = io.BytesIO()
        # Note: Pillow folds identical consecutive frames into one longer frame.
        iio.imwrite(buf, np.stack(rgb), extension=".gif", duration=round(1000 / fps), loop=0)
        data = buf.getvalue()
    else:
        # H.264 in yuv420p wants sides divisible by 16: pad (never resample) the frames.
        h, w = rgb[0].shape[:2]
        ph, pw = -h % 16, -w % 16
        rgb = [np.pad(f, ((0, ph), (0, pw), (0, 0))) for f in rgb]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "walk.mp4"
            with iio2.get_writer(out, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                 pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error") as w:
                for f in rgb:
                    w.append_data(f)
            data = out.read_bytes()
    runs.atomic_write_bytes(path, data)
    return path


# ---- real images in ------------------------------------------------------------------------------

def load_images(paths: list[Path], gen: ImageGenerator, label: str | int | None = None
                ) -> tuple[np.ndarray, list[int] | None]:
    """Image files (or folders of them) at the run's size and channels, with their labels for a
    conditional model: ``label`` for all, else the parent folder's name when it is a class name."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if not found:
                raise DataError(f"no PNG or JPEG images in '{p}'")
            files += found
        else:
            files.append(p)
    size, channels = gen.model.cfg.image_size, gen.model.cfg.channels
    images = np.stack([load_image_file(f, size, channels) for f in files])
    if not gen.conditional:
        if label is not None:
            gen.label_index(label)
        return images, None
    if label is not None:
        return images, [gen.label_index(label)] * len(files)
    lowered = [c.lower() for c in gen.class_names]
    labels = []
    for f in files:
        if f.parent.name.lower() not in lowered:
            raise ConfigError(f"this VAE is class-conditional: give --label (one of: {', '.join(gen.class_names)}), "
                              f"or keep '{f.name}' in a folder named after its class")
        labels.append(lowered.index(f.parent.name.lower()))
    return images, labels


def held_out_images(gen: ImageGenerator, n: int) -> tuple[np.ndarray, list[int] | None]:
    """The first ``n`` held-out images of the data set the run was trained on."""
    try:
        data = load_image_data(ImageDataConfig.from_dict(gen.run_config["data"]["config"]))
    except DataError as e:
        raise DataError(f"{e} (the run's data set is needed for its held-out images; or give --images)") from None
    split = data.test if len(data.test) else data.train
    n = min(n, len(split))
    return split.images[:n], (split.labels[:n].tolist() if gen.conditional else None)
