"""Enlarging pictures, GIFs and videos with a trained upscale run (genlab.models.upscale).

- ``ImageUpscaler.apply(frames)``: one pass of the network over uint8 (N, H, W, C) frames. Large
  frames are cut into tiles with a margin as wide as the network's receptive field, so the result
  equals the whole-frame result while memory stays bounded.
- Channels: a grayscale run enlarges a colour picture's luma (Y of BT.601 YCbCr, what the model's
  gray training images are) and the two chroma planes by bicubic, as ESPCN does; a picture whose
  three channels are equal is treated as gray. An RGB run enlarges a gray picture as three equal
  channels. Alpha is enlarged by bicubic.
- ``enlarge(image, factor)``: the network as many times as its scale fits into ``factor``
  (2x applied three times for 8x), then bicubic for what is left (28 px -> 224 by the network,
  -> 280 by bicubic for a factor of 10).
- An exported upscaler (``genlab export RUN --format onnx``) runs in onnxruntime through the same
  class: ``ImageUpscaler.from_run`` takes a run directory or the ``.onnx`` file.
- ``upscale_file``: PNG/JPEG pictures, GIFs (every frame, its duration and the loop count kept)
  and MP4s (every frame, the frame rate and any audio track kept), written to a temp file beside
  the output and renamed into place.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence

from genlab import runs
from genlab.device import pick_device
from genlab.errors import ConfigError, DataError, RunError
from genlab.models.upscale import UpscaleConfig, Upscaler

FAMILY = "upscale"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
KINDS = {".png": "picture", ".jpg": "picture", ".jpeg": "picture", ".gif": "gif", ".mp4": "mp4"}
TILE = 256  # low-res tile side (pixels) above which a frame is processed in tiles
CHUNK_PIXELS = 256 * 256  # low-res pixels per forward pass when frames are batched


class ImageUpscaler:
    """A trained upscaler and the run it came from."""

    def __init__(self, model: Upscaler, run: Path | None = None) -> None:
        self.model = model.eval()
        self.run = Path(run) if run else None
        self.tile = TILE

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> ImageUpscaler:
        """A run directory, or an upscaler exported to ONNX (which runs in onnxruntime on the CPU)."""
        if Path(run).suffix.lower() == ".onnx":
            return cls(OnnxUpscaleNet(Path(run)), Path(run))
        cfg = runs.read_config(run)
        if cfg["family"] != FAMILY:
            raise RunError(f"run '{run}' holds a {cfg['family']} model, not an upscaler; train one with "
                           f"`genlab train upscale --data ... --scale 2 --out RUN`")
        model = Upscaler(UpscaleConfig.from_dict(cfg["model"]))
        runs.load_weights(run, model)
        return cls(model.to(pick_device(device)), run)

    @property
    def scale(self) -> int:
        return self.model.cfg.scale

    @property
    def channels(self) -> int:
        return self.model.cfg.channels

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    # ---- one pass ----

    @torch.no_grad()
    def _net(self, x: torch.Tensor) -> torch.Tensor:
        """The network on (N, C, h, w) in [0, 1], in tiles when the frame is large; clamped."""
        n, c, h, w = x.shape
        s, t = self.scale, self.tile
        if h <= t and w <= t:
            return self.model(x.to(self.device)).float().clamp_(0, 1).cpu()
        r = self.model.cfg.receptive_radius
        out = torch.empty(n, c, h * s, w * s)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0 = max(0, y0 - r), max(0, x0 - r)
                tile = self.model(x[:, :, py0: min(h, y1 + r), px0: min(w, x1 + r)].to(self.device)).float()
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s: y1 * s, x0 * s: x1 * s] = tile[:, :, oy: oy + (y1 - y0) * s,
                                                                   ox: ox + (x1 - x0) * s].clamp(0, 1).cpu()
        return out

    def _bicubic(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp_(0, 1)

    def _planes(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) with C in 1 or 3 -> enlarged, the channels matched to the model (see the module doc)."""
        c = x.shape[1]
        if c == self.channels:
            return self._net(x)
        if c == 1:  # an RGB model on a gray picture
            return self._net(x.expand(-1, 3, -1, -1)).mean(1, keepdim=True)
        if torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]):  # a gray picture stored as RGB
            return self._net(x[:, :1]).expand(-1, 3, -1, -1)
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # a gray model on colour: luma by the model, chroma by bicubic
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cb, cr = (b - y) / 1.772, (r - y) / 1.402
        y = self._net(y)
        cb, cr = (F.interpolate(t, scale_factor=self.scale, mode="bicubic", align_corners=False) for t in (cb, cr))
        return torch.cat([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1).clamp_(0, 1)

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """One pass over uint8 (N, H, W, C) frames, C in 1, 3 or 4 -> uint8 (N, H*s, W*s, C)."""
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
            raise ConfigError(f"expected frames of shape (N, H, W, 1|3|4), got {frames.shape}")
        n, h, w, c = frames.shape
        outs = []
        step = max(1, CHUNK_PIXELS // (h * w))
        for i in range(0, n, step):
            x = torch.from_numpy(np.array(frames[i: i + step])).permute(0, 3, 1, 2).float().div_(255)
            colour = x[:, :3] if c == 4 else x
            y = self._planes(colour)
            if c == 4:
                y = torch.cat([y, self._bicubic(x[:, 3:])], 1)
            outs.append(y.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(outs)

    # ---- any factor ----

    def plan(self, factor: int) -> tuple[int, bool]:
        """(network passes, whether bicubic finishes) for an integer enlargement ``factor``."""
        if factor < 1:
            raise ConfigError(f"the enlargement must be at least 1 (got {factor})")
        passes = int(math.floor(math.log(factor, self.scale) + 1e-9))
        return passes, self.scale ** passes != factor

    def enlarge_frames(self, frames: np.ndarray, factor: int) -> np.ndarray:
        """uint8 (N, H, W, C) frames enlarged ``factor`` times: network passes, then bicubic for the rest."""
        passes, rest = self.plan(factor)
        n, h, w, c = frames.shape
        for _ in range(passes):
            frames = self.apply(frames)
        if rest:
            frames = np.stack([resize_bicubic(f, w * factor, h * factor) for f in frames])
        return frames

    def enlarge(self, image: np.ndarray, factor: int) -> np.ndarray:
        """One uint8 (H, W, C) picture enlarged ``factor`` times."""
        return self.enlarge_frames(image[None], factor)[0]

    def describe(self, factor: int) -> dict:
        passes, rest = self.plan(factor)
        return {"method": "upscale-run", "run": self.run.name if self.run else None, "scale": self.scale, "channels": self.channels,
                "factor": factor, "passes": passes, "finish": "bicubic" if rest else None}


class OnnxUpscaleNet(torch.nn.Module):
    """An exported upscaler behind the network's call: (N, C, h, w) in [0, 1] -> (N, C, h*s, w*s)."""

    def __init__(self, path: Path) -> None:
        from genlab.runtimes.onnx import UPSCALE_FORMAT, session

        super().__init__()
        if not path.is_file():
            raise RunError(f"'{path}' does not exist; export an upscale run with "
                           f"`genlab export RUN --format onnx --out {path}`")
        self.session = session(path)
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map.get("genlab.config", "{}"))
        if meta.get("format") != UPSCALE_FORMAT:
            raise RunError(f"'{path}' is not an exported genlab upscaler (format {meta.get('format')!r})")
        self.cfg = UpscaleConfig.from_dict(meta["model"])
        self.int8 = bool(meta.get("int8"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"low": low})[0])


def resize_bicubic(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, C) uint8 resized by Pillow's bicubic filter."""
    c = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC))
    return out.reshape(height, width, c)


# ---- files --------------------------------------------------------------------------------------------

@dataclass
class UpscaleResult:
    input: Path
    output: Path
    kind: str  # picture | gif | mp4
    frames: int
    in_size: tuple[int, int]  # (width, height)
    out_size: tuple[int, int]
    seconds: float  # time spent enlarging (reading and encoding excluded)
    timing: dict = field(default_factory=dict)  # GIF: durations (ms) and loop; MP4: fps

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def kind_of(path: Path, what: str) -> str:
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{what} '{path.name}' has an unknown extension; genlab upscale reads and writes "
                          f".png, .jpg/.jpeg, .gif and .mp4 files")
    return kind


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temp path with ``out``'s suffix in a hidden folder beside it (ffmpeg picks the container by the
    suffix); on success it is fsynced and renamed to ``out``, on failure removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp = tmp_dir / f"out{out.suffix.lower()}"
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _unreadable(path: Path, e: Exception) -> DataError:
    return DataError(f"cannot read '{path}' ({e.__class__.__name__}): it is corrupted or not a "
                     f"{path.suffix.lstrip('.').upper()} file")


def _as_array(im: Image.Image) -> np.ndarray:
    """(H, W, C) uint8: L for gray, RGB, or RGBA when the picture has transparency."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode in ("1", "I", "I;16", "F") else "RGB")
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def _gray_if_equal(frames: np.ndarray) -> np.ndarray:
    """RGB frames whose channels are all equal become one gray channel (smaller GIFs, no palette dithering)."""
    if frames.shape[-1] == 3 and (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all():
        return frames[..., :1]
    return frames


def _picture_bytes(image: np.ndarray, suffix: str) -> bytes:
    c = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    buf = io.BytesIO()
    if suffix == ".png":
        pil.save(buf, format="PNG", compress_level=6)
    else:  # JPEG has no alpha: lay the picture on white
        if pil.mode == "RGBA":
            pil = Image.alpha_composite(Image.new("RGBA", pil.size, (255, 255, 255, 255)), pil).convert("RGB")
        pil.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def read_gif(path: Path) -> tuple[np.ndarray, list[int], int | None]:
    """Every frame of a GIF (as shown: Pillow composes partial frames), each frame's duration (ms) and the
    loop count (None: play once)."""
    try:
        with Image.open(path) as im:
            if im.format != "GIF":
                raise OSError(f"a {im.format} picture")
            loop = im.info.get("loop")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                durations.append(int(frame.info.get("duration", 100)))
                frames.append(np.asarray(frame.convert("RGBA")))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    arr = np.stack(frames)
    if (arr[..., 3] == 255).all():
        arr = arr[..., :3]
    return _gray_if_equal(arr), durations, loop


def write_gif(frames: np.ndarray, durations: list[int], loop: int | None, path: Path) -> None:
    pics = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    extra = {"loop": loop} if loop is not None else {}
    pics[0].save(path, format="GIF", save_all=True, append_images=pics[1:], duration=list(durations),
                 disposal=2, optimize=False, **extra)


def upscale_file(up: ImageUpscaler, src: str | Path, dst: str | Path, factor: int | None = None,
                 progress: Callable[[int, int | None], None] | None = None) -> UpscaleResult:
    """Enlarge a picture, GIF or MP4 ``factor`` times (default: the run's scale) into ``dst`` (the same
    kind of file as ``src``). ``progress(frames_done, frames_total_or_None)`` is called as frames finish."""
    src, dst = Path(src), Path(dst)
    kind, out_kind = kind_of(src, "input"), kind_of(dst, "--out")
    if kind != out_kind:
        want = ".png or .jpg" if kind == "picture" else f".{kind}"
        raise ConfigError(f"--out must be a {want} file for a {src.suffix.lower()} input (got '{dst.name}')")
    if not src.is_file():
        raise DataError(f"input '{src}' does not exist" if not src.exists() else f"input '{src}' is not a file")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"--out is the input file '{src}'; give another name")
    if dst.is_dir():
        raise ConfigError(f"--out '{dst}' is a folder; give a file name")
    factor = up.scale if factor is None else factor
    up.plan(factor)
    note = progress or (lambda done, total: None)
    if kind == "mp4":
        return _upscale_mp4(up, src, dst, factor, note)
    if kind == "gif":
        frames, durations, loop = read_gif(src)
        timing: dict = {"durations_ms": durations, "loop": loop}
    else:
        try:
            with Image.open(src) as im:
                im.load()
                frames = _as_array(im)[None]
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise _unreadable(src, e) from None
        frames, timing = _gray_if_equal(frames), {}
    t = time.perf_counter()
    out = []
    for i in range(0, len(frames), 16):
        out.append(up.enlarge_frames(frames[i: i + 16], factor))
        note(min(i + 16, len(frames)), len(frames))
    seconds = time.perf_counter() - t
    big = np.concatenate(out)
    with staged_output(dst) as tmp:
        if kind == "gif":
            write_gif(big, durations, loop, tmp)
        else:
            tmp.write_bytes(_picture_bytes(big[0], dst.suffix.lower()))
    h, w = frames.shape[1:3]
    return UpscaleResult(src, dst, kind, len(frames), (w, h), (w * factor, h * factor), seconds, timing)


def _upscale_mp4(up: ImageUpscaler, src: Path, dst: Path, factor: int,
                 note: Callable[[int, int | None], None]) -> UpscaleResult:
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(src, format="FFMPEG")
        meta = reader.get_meta_data()
    except Exception as e:  # imageio/ffmpeg raise OSError, RuntimeError, IndexError... for bad files
        raise _unreadable(src, e) from None
    fps = float(meta.get("fps") or 0)
    if not fps > 0:
        reader.close()
        raise DataError(f"cannot read the frame rate of '{src}'; is it a video?")
    w, h = meta["size"]
    duration = meta.get("duration")
    total = round(duration * fps) if duration and math.isfinite(duration) else None
    audio = {"audio_path": str(src), "audio_codec": "copy"} if meta.get("audio_codec") else {}
    frames, seconds = 0, 0.0
    try:
        with staged_output(dst) as tmp:
            writer = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                     pixelformat="yuv420p", macro_block_size=2, ffmpeg_log_level="error", **audio)
            try:
                batch: list[np.ndarray] = []

                def flush() -> None:
                    nonlocal frames, seconds
                    t = time.perf_counter()
                    big = up.enlarge_frames(np.stack(batch), factor)
                    seconds += time.perf_counter() - t
                    for f in big:
                        writer.append_data(f)
                    frames += len(batch)
                    batch.clear()
                    note(frames, total)

                try:
                    for f in reader:
                        batch.append(np.asarray(f)[..., :3])
                        if len(batch) * w * h >= CHUNK_PIXELS:
                            flush()
                except Exception as e:  # a truncated stream fails while reading
                    raise _unreadable(src, e) from None
                if batch:
                    flush()
            finally:
                writer.close()
            if frames == 0:
                raise DataError(f"'{src}' holds no video frames")
    finally:
        reader.close()
    return UpscaleResult(src, dst, "mp4", frames, (w, h), (w * factor, h * factor), seconds,
                         {"fps": fps, "audio": bool(audio)})
