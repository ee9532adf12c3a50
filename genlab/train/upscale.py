"""Super-resolution training: the upscale family as a shared-trainer ``Task``, its presets and run
setup, and the image-quality metrics (PSNR, SSIM) that training, `genlab eval` and the benchmark share.

Training pairs are made inside the task: a high-res patch is cut from a data-set image (random
place, random horizontal flip), and its low-res partner is the patch shrunk by bicubic
interpolation with antialiasing (what a camera's or a resizer's downscale looks like), rounded to
8-bit levels as a real low-res picture is. The patch's place and flip come from the trainer's batch
RNG, so a resumed run sees the same pairs (exact resume); the downscale is deterministic.

The loss is the L1 distance between the model's output and the high-res patch (sharper than L2 for
super-resolution, EDSR's choice). Validation scores whole held-out images: PSNR and SSIM of the model
and of plain bicubic enlargement of the same low-res input, so every evaluation row says how far the
model is ahead of the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab import runs
from genlab.config import TrainConfig
from genlab.data.images import ImageData, ImageDataConfig, load_image_data
from genlab.device import seed_everything
from genlab.errors import ConfigError, DataError
from genlab.models.upscale import UpscaleConfig, Upscaler
from genlab.train.trainer import TrainResult, begin, create_run, resumed_train_config, train

FAMILY = "upscale"
MAX_PATCH = 48

# tiny: seconds on drawn shapes (tests; a constant lr after warmup: a cosine over ~150 steps decays before
# the network has learned much); small: a few CPU minutes on Fashion-MNIST beat bicubic clearly.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(width=16, blocks=2),
    "small": dict(width=32, blocks=4),
}
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, lr=5e-3, betas=(0.9, 0.99), warmup_steps=10, min_lr_ratio=1.0, weight_decay=0.0,
                 eval_every=50, checkpoint_every=50, eval_batches=2),
    "small": dict(batch_size=32, lr=2e-3, betas=(0.9, 0.99), warmup_steps=100, weight_decay=0.0,
                  eval_every=500, checkpoint_every=500, eval_batches=16),
}


def check_preset(preset: str) -> None:
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(MODEL_PRESETS)}")


def upscale_train_config(preset: str = "tiny", **overrides) -> TrainConfig:
    check_preset(preset)
    values = dict(TRAIN_PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def upscale_model_config(preset: str, channels: int, scale: int, **overrides) -> UpscaleConfig:
    check_preset(preset)
    values = {**MODEL_PRESETS[preset], "channels": channels, "scale": scale}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(UpscaleConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown upscale setting(s): {', '.join(sorted(unknown))}")
    cfg = UpscaleConfig(**values)
    cfg.validate()
    return cfg


def default_patch(image_size: int, scale: int) -> int:
    """High-res patch side: most of the image (room for random crops), at most MAX_PATCH, a multiple of scale."""
    return min(MAX_PATCH, image_size * 7 // 8) // scale * scale


def check_patch(patch: int, scale: int, image_size: int) -> None:
    if patch % scale or patch < 2 * scale:
        raise ConfigError(f"--patch must be a multiple of the scale {scale} and at least {2 * scale} (got {patch})")
    if patch > image_size:
        raise ConfigError(f"--patch {patch} is larger than the images ({image_size} px); lower it or raise --image-size")


# ---- degradation and metrics ----------------------------------------------------------------------

def to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-res partner of (N, C, H, W) images in [0, 1] (H, W multiples of ``scale``): antialiased
    bicubic shrinking, rounded to 8-bit levels."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp_(0, 1).mul_(255).round_().div_(255)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB, peak 1) of each image in a batch; identical images give 100 dB."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    peak 1) of each image in a batch, averaged over the valid window positions and the channels."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    size = min(11, *x.shape[-2:])
    win = _gauss(size).to(x.device).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def crop_to_scale(images: np.ndarray, scale: int) -> np.ndarray:
    h, w = images.shape[-2:]
    return images[..., : h - h % scale, : w - w % scale]


@torch.no_grad()
def score_pairs(model: Upscaler, images: np.ndarray, batch_size: int = 256) -> dict[str, float]:
    """PSNR/SSIM of the model and of bicubic on uint8 (N, C, H, W) high-res images, each shrunk by the
    model's scale first; means over the images (whole images, no border shaved), plus the L1 loss.
    Always fp32 (autocast off, also inside the trainer's evaluation), so training rows and `genlab eval`
    agree on every device."""
    scale = model.cfg.scale
    images = crop_to_scale(images, scale)
    dev = next(model.parameters()).device
    sums = {"loss": 0.0, "psnr": 0.0, "psnr_bicubic": 0.0, "ssim": 0.0, "ssim_bicubic": 0.0}
    with torch.autocast(dev.type, enabled=False):
        for i in range(0, len(images), batch_size):
            _score_batch(model, to_unit(images[i: i + batch_size]).to(dev), sums)
    n = max(len(images), 1)
    return {k: v / n for k, v in sums.items()}


def _score_batch(model: Upscaler, hr: torch.Tensor, sums: dict[str, float]) -> None:
    lr = downscale(hr, model.cfg.scale)
    out = model(lr).float()
    sums["loss"] += F.l1_loss(out, hr, reduction="none").flatten(1).mean(1).sum().item()
    sr, bic = out.clamp(0, 1), model.bicubic(lr).float().clamp(0, 1)
    # Both compared as the 8-bit pictures a user would get.
    sr, bic = sr.mul(255).round().div(255), bic.mul(255).round().div(255)
    sums["psnr"] += psnr(sr, hr).sum().item()
    sums["psnr_bicubic"] += psnr(bic, hr).sum().item()
    sums["ssim"] += ssim(sr, hr).sum().item()
    sums["ssim_bicubic"] += ssim(bic, hr).sum().item()


# ---- the task ---------------------------------------------------------------------------------------

class UpscaleTask:
    family = FAMILY
    unit = "img"
    metric_names = ("loss", "psnr", "psnr_bicubic", "ssim", "ssim_bicubic")

    def __init__(self, model: Upscaler, data: ImageData, patch: int, batch_size: int, eval_batches: int) -> None:
        self.model = model
        self.data = data
        self.patch = patch
        self.batch_size = batch_size
        held_out = data.test if len(data.test) else data.train
        self.eval_images = held_out.images[: min(len(held_out), eval_batches * batch_size)]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train_batch(self, rng: np.random.Generator) -> np.ndarray:
        """High-res patches: which image, where, and whether mirrored, all from the batch RNG."""
        images, _ = self.data.train.batch(rng, self.batch_size)
        size, p = images.shape[-1], self.patch
        ys = rng.integers(0, images.shape[-2] - p + 1, size=len(images))
        xs = rng.integers(0, size - p + 1, size=len(images))
        flips = rng.random(len(images)) < 0.5
        out = np.stack([im[:, y: y + p, x: x + p] for im, y, x in zip(images, ys, xs, strict=True)])
        out[flips] = out[flips][..., ::-1]
        return out

    def loss(self, model, batch: np.ndarray) -> tuple[torch.Tensor, int]:
        hr = to_unit(batch).to(self.device)
        lr = downscale(hr, self.model.cfg.scale)
        return F.l1_loss(model(lr).float(), hr), len(hr)

    def evaluate(self, model) -> dict[str, float]:
        return score_pairs(runs.unwrap(model), self.eval_images, self.batch_size)

    def sample(self, model, step: int, out_dir: Path) -> None:
        """Eight held-out images in four rows: low-res (pixels enlarged), bicubic, the model, the original."""
        from genlab.generate.images import save_grid

        m = runs.unwrap(model)
        scale = m.cfg.scale
        hr_np = crop_to_scale(self.eval_images[:8], scale)
        hr = to_unit(hr_np).to(self.device)
        lr = downscale(hr, scale)
        rows = [F.interpolate(lr, scale_factor=scale, mode="nearest"), m.bicubic(lr), m(lr), hr]
        pics = torch.cat([r.float().clamp(0, 1) for r in rows]).mul(255).round().to(torch.uint8).cpu().numpy()
        save_grid(pics, out_dir / f"step_{step:06d}.png", nrow=len(hr_np), scale=max(1, 64 // hr_np.shape[-1]))


# ---- a run ------------------------------------------------------------------------------------------

@dataclass
class UpscaleTrainSpec:
    """Everything `genlab train upscale` needs; the CLI only fills it in."""

    run: Path
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    scale: int | None = None  # None: 2 for a new run, the run's own on resume
    preset: str = "tiny"
    patch: int | None = None  # high-res patch side; None: default_patch
    model_overrides: dict = field(default_factory=dict)
    train: TrainConfig | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


def train_upscale(spec: UpscaleTrainSpec) -> TrainResult:
    check_preset(spec.preset)
    run = Path(spec.run)
    tcfg = spec.train
    dist, log = begin(tcfg, spec.quiet)
    if spec.resume:
        saved = runs.read_config(run, family=FAMILY)
        data_cfg = ImageDataConfig.from_dict(saved["data"]["config"])
        model_cfg = UpscaleConfig.from_dict(saved["model"])
        if spec.scale is not None and spec.scale != model_cfg.scale:
            raise ConfigError(f"run '{run}' upscales by {model_cfg.scale}; --resume cannot change it to "
                              f"{spec.scale} (start a new run)")
        patch = int(saved["patch"])
        tcfg = resumed_train_config(saved, tcfg)
    else:
        runs.require_new(run, spec.overwrite)
        data_cfg = spec.data
        model_cfg = upscale_model_config(spec.preset, data_cfg.channels, spec.scale or 2, **spec.model_overrides)
        patch = spec.patch or default_patch(data_cfg.image_size, model_cfg.scale)
        check_patch(patch, model_cfg.scale, data_cfg.image_size)

    data = dist.main_first(lambda: load_image_data(data_cfg))
    log(f"data: {data.name}, {len(data.train):,} train / {len(data.test):,} held-out images, "
        f"{data.config.image_size}px x {data.config.channels} channel(s); {patch}px patches, {model_cfg.scale}x")
    if spec.resume:
        if saved["data"]["fingerprint"] != data.fingerprint:
            raise DataError(f"the data set '{data.name}' changed since run '{run}' started "
                            f"(fingerprint {data.fingerprint} != {saved['data']['fingerprint']}); "
                            f"an exact resume needs the same images")
    else:
        create_run(run, {"family": FAMILY, "preset": spec.preset, "model": model_cfg.to_dict(), "patch": patch,
                         "train": tcfg.to_dict(), "data": data.meta()}, dist, spec.overwrite)
        dist.barrier()

    seed_everything(tcfg.seed)
    task = UpscaleTask(Upscaler(model_cfg), data, patch, tcfg.batch_size, tcfg.eval_batches)
    return train(task, tcfg, run, resume=spec.resume, quiet=spec.quiet, dist=dist)


def bicubic_gain(val: dict[str, float]) -> str:
    """'+1.23 dB PSNR, +0.012 SSIM over bicubic' for a validation row."""
    if not val or not all(k in val for k in ("psnr", "psnr_bicubic", "ssim", "ssim_bicubic")):
        return ""
    d_psnr, d_ssim = val["psnr"] - val["psnr_bicubic"], val["ssim"] - val["ssim_bicubic"]
    if not (math.isfinite(d_psnr) and math.isfinite(d_ssim)):
        return ""
    return f"{d_psnr:+.2f} dB PSNR, {d_ssim:+.4f} SSIM over bicubic"
