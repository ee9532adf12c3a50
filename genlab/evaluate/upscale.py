"""`genlab eval` on an upscale run: PSNR and SSIM of the model and of bicubic enlargement on the
held-out split of the run's own data set (each image shrunk by the run's scale exactly as in
training: antialiased bicubic, 8-bit levels), whole images, no border shaved."""

from __future__ import annotations

import time
from pathlib import Path

from genlab import runs
from genlab.data.images import ImageDataConfig, load_image_data
from genlab.errors import ConfigError, DataError
from genlab.generate.upscale import ImageUpscaler
from genlab.train.upscale import bicubic_gain, score_pairs


def evaluate_upscale_run(run: str | Path, n: int | None = None, device: str = "auto") -> dict:
    """Scores of the model and of bicubic on the first ``n`` held-out images (all of them by default)."""
    cfg = runs.read_config(run, family="upscale")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be positive (got {n})")
    try:
        data = load_image_data(ImageDataConfig.from_dict(cfg["data"]["config"]))
    except DataError as e:
        raise DataError(f"{e} (the run's data set is needed for its held-out images)") from None
    split, which = (data.test, "test") if len(data.test) else (data.train, "train (no held-out images)")
    images = split.images[: n or len(split)]
    up = ImageUpscaler.from_run(run, device=device)
    t = time.perf_counter()
    scores = score_pairs(up.model, images)
    seconds = time.perf_counter() - t
    return {"run": str(run), "data": data.name, "split": which, "images": len(images),
            "image_size": data.config.image_size, "channels": data.config.channels, "scale": up.scale,
            "step": int(runs.checkpoint_steps(Path(run))[0] or 0), **scores,
            "gain": bicubic_gain(scores), "seconds": round(seconds, 3)}


def format_report(res: dict) -> str:
    return (f"{res['data']} {res['split']} split, {res['images']:,} images of {res['image_size']} px, "
            f"{res['scale']}x (step {res['step']}):\n"
            f"  model    PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.4f}\n"
            f"  bicubic  PSNR {res['psnr_bicubic']:.2f} dB  SSIM {res['ssim_bicubic']:.4f}\n"
            f"  {res['gain']}")
