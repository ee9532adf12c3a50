"""Image data sets for the image families (and, later, a classifier): every source becomes one
``ImageData`` of uint8 arrays (N, C, H, W) at one square size, integer labels, class names, a fixed
train/test split and a fingerprint of the content.

Sources:
- ``fashion-mnist``: the IDX files (gzip) of Debian's dataset-fashion-mnist package, with their own
  60,000 / 10,000 train/test split and the ten class names.
- ``shapes``: circles, squares, triangles and crosses drawn on the fly (seeded): a data set that is
  always there, for smoke tests and dry runs.
- a folder of PNG/JPEG images, one sub-folder per class (the folder's name is the class name); a
  folder with images and no sub-folders is one class. Each image is centre-cropped to a square and
  resized. The test split holds a fixed share of each class, chosen by a hash of the file's path, so
  it does not move when files are added.

Decoded and resized arrays are cached under $GENLAB_CACHE/images (see genlab.data.prepare), so a
second run on the same folder starts at once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from genlab import runs
from genlab.data.prepare import cache_root
from genlab.errors import ConfigError, DataError
from genlab.jsonconfig import JsonConfig

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SHAPES_CLASSES = ("circle", "square", "triangle", "cross")
BUILTIN = ("fashion-mnist", "shapes")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FORMAT_VERSION = 1


@dataclass
class ImageDataConfig(JsonConfig):
    source: str = "fashion-mnist"  # fashion-mnist | shapes | a folder of class sub-folders
    image_size: int = 28
    channels: int = 1  # 1 = grayscale, 3 = RGB
    test_fraction: float = 0.1  # folders only: share of each class held out
    shapes_count: int = 512  # shapes only: training images (plus a quarter as many test images)

    def validate(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        if self.image_size < 4:
            raise ConfigError(f"image size must be at least 4 pixels (got {self.image_size})")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test fraction must be in [0, 1) (got {self.test_fraction})")
        if self.shapes_count <= 0:
            raise ConfigError(f"shapes count must be positive (got {self.shapes_count})")



@dataclass
class ImageSplit:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` images drawn with replacement: a pure function of the RNG (exact resume)."""
        idx = rng.integers(0, len(self), size=n)
        return self.images[idx], self.labels[idx]


@dataclass
class ImageData:
    name: str
    config: ImageDataConfig
    class_names: list[str]
    train: ImageSplit
    test: ImageSplit
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def meta(self) -> dict:
        """What a run's config.json records under "data"."""
        return {"name": self.name, "config": self.config.to_dict(), "image_size": self.config.image_size,
                "channels": self.config.channels, "class_names": list(self.class_names),
                "fingerprint": self.fingerprint, "train_images": len(self.train), "test_images": len(self.test)}


def resolve_label(label: str | int, class_names: list[str] | tuple[str, ...]) -> int:
    """A class index from a name (case-insensitive) or an index."""
    if isinstance(label, str):
        lowered = [c.lower() for c in class_names]
        if label.lower() in lowered:
            return lowered.index(label.lower())
        try:
            label = int(label)
        except ValueError:
            raise ConfigError(f"unknown label '{label}'; choose one of: {', '.join(class_names)} "
                              f"(or an index 0-{len(class_names) - 1})") from None
    if not 0 <= label < len(class_names):
        raise ConfigError(f"label index {label} is out of range 0-{len(class_names) - 1}")
    return label


def load_image_data(cfg: ImageDataConfig) -> ImageData:
    cfg.validate()
    if cfg.source == "fashion-mnist":
        return _fashion_mnist(cfg)
    if cfg.source == "shapes":
        return _shapes(cfg)
    return _folder(cfg)


# ---- Fashion-MNIST -------------------------------------------------------------------------------

def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("GENLAB_FASHION_MNIST", FASHION_MNIST_DIR))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) of unsigned bytes: magic 0x0000 08 NDIM, big-endian sizes, data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} ({e.__class__.__name__}); reinstall it with `make setup`") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupted (expected {int(np.prod(shape))} bytes of data)")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape).copy()  # writable, for torch


def _fashion_mnist(cfg: ImageDataConfig) -> ImageData:
    root = fashion_mnist_dir()
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    paths = [root / n for pair in names.values() for n in pair]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DataError(f"Fashion-MNIST is not installed ({root} lacks {missing[0]}); run `make setup` "
                        f"(it installs the dataset-fashion-mnist package) or give --data PATH")
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    content = digest.hexdigest()[:16]

    def build() -> tuple[dict[str, ImageSplit], list[str]]:
        splits = {}
        for split, (img_name, lab_name) in names.items():
            images, labels = read_idx(root / img_name), read_idx(root / lab_name)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{root / img_name} and {root / lab_name} do not match")
            splits[split] = ImageSplit(_resize_gray(images, cfg), labels.astype(np.int64))
        return splits, list(FASHION_MNIST_CLASSES)

    native = cfg.image_size == 28 and cfg.channels == 1  # fast to parse: no need for a cache entry
    splits, classes = build() if native else _cached(("fashion-mnist", content, cfg.image_size, cfg.channels),
                                                     build)
    return ImageData("fashion-mnist", cfg, classes, splits["train"], splits["test"],
                     _fingerprint(content, cfg))


# ---- drawn shapes --------------------------------------------------------------------------------

def draw_shapes(n: int, size: int, channels: int, seed: int) -> ImageSplit:
    """``n`` images of one shape each (label = index in SHAPES_CLASSES), random place, size and colour."""
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((n, channels, size, size), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPES_CLASSES), size=n)
    for i, label in enumerate(labels):
        im = Image.new(mode, (size, size), 0)
        draw = ImageDraw.Draw(im)
        r = rng.uniform(0.2, 0.4) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        fill = int(rng.integers(128, 256)) if channels == 1 else tuple(int(v) for v in rng.integers(64, 256, 3))
        box = [cx - r, cy - r, cx + r, cy + r]
        kind = SHAPES_CLASSES[label]
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "square":
            draw.rectangle(box, fill=fill)
        elif kind == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            w = max(r / 3, 1)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        images[i] = np.asarray(im).reshape(size, size, channels).transpose(2, 0, 1)
    return ImageSplit(images, labels.astype(np.int64))


def _shapes(cfg: ImageDataConfig) -> ImageData:
    train = draw_shapes(cfg.shapes_count, cfg.image_size, cfg.channels, seed=0)
    test = draw_shapes(max(cfg.shapes_count // 4, 1), cfg.image_size, cfg.channels, seed=1)
    content = hashlib.sha256(train.images.tobytes() + test.images.tobytes()).hexdigest()[:16]
    return ImageData("shapes", cfg, list(SHAPES_CLASSES), train, test, _fingerprint(content, cfg))


# ---- folders of images ---------------------------------------------------------------------------

def load_image_file(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (C, size, size): transparency flattened onto white, centre-cropped to
    a square, resized. A file Pillow cannot decode is a DataError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            im = im.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise DataError(f"image '{path}' does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image '{path}' ({e.__class__.__name__}): it is corrupted or not "
                        f"an image; remove or replace it") from None
    square = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(square).reshape(size, size, channels).transpose(2, 0, 1).copy()


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def scan_folder(root: Path) -> list[tuple[str, list[Path]]]:
    """(class name, image files) per class, in sorted order."""
    if not root.exists():
        raise DataError(f"data set '{root}' not found: give fashion-mnist, shapes or a folder of images")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; give a folder with one sub-folder of images per class")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [(d.name, sorted(p for p in d.rglob("*") if _is_image(p))) for d in subdirs]
    classes = [(name, files) for name, files in classes if files]
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    if loose and classes:
        raise DataError(f"'{root}' has images both at the top and in sub-folders; put every image in a "
                        f"class sub-folder (e.g. {root / 'unlabelled' / loose[0].name})")
    if loose:
        classes = [(root.resolve().name or "images", loose)]
    if not classes:
        raise DataError(f"no PNG or JPEG images in '{root}'; expected one sub-folder of images per class")
    return classes


def _folder(cfg: ImageDataConfig) -> ImageData:
    root = Path(cfg.source)
    classes = scan_folder(root)
    # The cache key changes with any file's name, size or modification time, and with the settings.
    listing = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for _, fs in classes for p in fs]

    def build() -> tuple[dict[str, ImageSplit], list[str]]:
        per_split: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
        for label, (_, files) in enumerate(classes):
            # Hash order, not name order: the held-out images are spread over the class.
            ranked = sorted(files, key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest())
            n_test = max(1, round(len(files) * cfg.test_fraction)) if cfg.test_fraction and len(files) > 1 else 0
            held_out = set(ranked[:n_test])
            for p in files:
                imgs, labs = per_split["test" if p in held_out else "train"]
                imgs.append(load_image_file(p, cfg.image_size, cfg.channels))
                labs.append(label)
        empty = np.zeros((0, cfg.channels, cfg.image_size, cfg.image_size), np.uint8)
        splits = {k: ImageSplit(np.stack(v[0]) if v[0] else empty, np.asarray(v[1], np.int64))
                  for k, v in per_split.items()}
        return splits, [name for name, _ in classes]

    splits, class_names = _cached(("folder", str(root.resolve()), listing, cfg.to_dict()), build)
    content = hashlib.sha256(splits["train"].images.tobytes() + splits["test"].images.tobytes()
                             + json.dumps(class_names).encode()).hexdigest()[:16]
    return ImageData(str(root), cfg, class_names, splits["train"], splits["test"], _fingerprint(content, cfg))


# ---- shared helpers ------------------------------------------------------------------------------

def _fingerprint(content: str, cfg: ImageDataConfig) -> str:
    settings = json.dumps([content, cfg.image_size, cfg.channels, cfg.test_fraction, FORMAT_VERSION])
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def _resize_gray(images: np.ndarray, cfg: ImageDataConfig) -> np.ndarray:
    """Grayscale (N, H, W) uint8 to (N, C, size, size) at the configured size and channel count."""
    size = cfg.image_size
    if images.shape[1:] != (size, size):
        images = np.stack([np.asarray(ImageOps.fit(Image.fromarray(im, "L"), (size, size),
                                                   method=Image.Resampling.LANCZOS)) for im in images])
    images = images[:, None]
    return np.ascontiguousarray(np.repeat(images, 3, axis=1) if cfg.channels == 3 else images)


def _cached(key, build: Callable[[], tuple[dict[str, ImageSplit], list[str]]]
            ) -> tuple[dict[str, ImageSplit], list[str]]:
    """The arrays for ``key`` from the cache, or built and stored (atomically) there."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, key]).encode()).hexdigest()[:20]
    path = cache_root() / "images" / f"{digest}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                splits = {s: ImageSplit(z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "test")}
                return splits, json.loads(str(z["class_names"]))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    splits, class_names = build()
    buf = io.BytesIO()
    np.savez(buf, class_names=np.array(json.dumps(class_names)),
             **{f"{s}_{k}": getattr(splits[s], k) for s in splits for k in ("images", "labels")})
    runs.atomic_write_bytes(path, buf.getvalue())
    return splits, class_names
