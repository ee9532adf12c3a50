"""Differentiable augmentation for training on few images (DiffAugment, Zhao et al. 2020; the same
idea as ADA's augmenting of every image the discriminator sees, without ADA's adaptive strength).

A GAN's discriminator memorises a few dozen images within a few hundred steps; its scores then stop
telling the generator anything useful. Augmenting the real images alone would teach the generator to
draw augmented images, so the same kind of random transform is applied to real *and* generated images
before D, and it is differentiable, so the generator's gradient flows back through it.

Operations (each image gets its own random parameters):

- ``color``: brightness (add U(-0.5, 0.5)), saturation (scale the distance to the channel mean by
  U(0, 2); nothing for grayscale) and contrast (scale the distance to the image mean by U(0.5, 1.5));
- ``translation``: shift by up to 1/8 of the side in x and y, filling with 0;
- ``cutout``: zero a square of half the side at a random place;
- ``flip``: mirror left-right with probability 1/2 (for a VAE's inputs; not a DiffAugment operation).

The parameters are drawn with numpy from the trainer's batch RNG (``draw``) and applied in torch
(``apply``): a resumed run draws the same transforms as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import ConfigError

OPERATIONS = ("color", "translation", "cutout", "flip")
TRANSLATION_RATIO = 1 / 8  # the DiffAugment paper's settings
CUTOUT_RATIO = 1 / 2


def parse_policy(text: str | list[str] | None) -> list[str]:
    """A comma list such as "translation,cutout,color" -> its operations, checked; "none" or "" -> []."""
    items = text if isinstance(text, list) else [t.strip() for t in (text or "").split(",")]
    items = [t for t in items if t and t != "none"]
    unknown = [t for t in items if t not in OPERATIONS]
    if unknown:
        raise ConfigError(f"unknown augmentation '{unknown[0]}'; choose from {', '.join(OPERATIONS)} (or none)")
    return list(dict.fromkeys(items))  # in the given order, each once


@dataclass
class DiffAugment:
    policy: list[str]
    image_size: int

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Random parameters for ``n`` images, one operation after another in the policy's order."""
        size = self.image_size
        params: dict[str, np.ndarray] = {}
        for op in self.policy:
            if op == "color":
                params["color"] = rng.random((n, 3), dtype=np.float32)  # brightness, saturation, contrast
            elif op == "translation":
                s = int(size * TRANSLATION_RATIO + 0.5)
                params["translation"] = rng.integers(-s, s + 1, size=(n, 2))  # dy, dx
            elif op == "cutout":
                params["cutout"] = rng.integers(0, size, size=(n, 2))  # centre y, x
            elif op == "flip":
                params["flip"] = rng.random(n) < 0.5
        return params

    def apply(self, x: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
        """``x`` (N, C, H, W) transformed with ``params`` (from ``draw`` for N images)."""
        for op in self.policy:
            p = torch.from_numpy(params[op]).to(x.device)
            if op == "color":
                x = color(x, p.to(x.dtype))
            elif op == "translation":
                x = translate(x, p)
            elif op == "cutout":
                x = cutout(x, p, int(self.image_size * CUTOUT_RATIO + 0.5))
            elif op == "flip":
                x = torch.where(p[:, None, None, None], x.flip(3), x)
        return x

    def bind(self, params: dict[str, np.ndarray]):
        """``apply`` with these parameters: the one-argument callable the GAN's forward takes."""
        return lambda x: self.apply(x, params)


def color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness, saturation and contrast, with u in [0, 1) of shape (N, 3)."""
    x = x + (u[:, 0] - 0.5)[:, None, None, None]
    if x.size(1) > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (u[:, 1] * 2)[:, None, None, None] + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (u[:, 2] + 0.5)[:, None, None, None] + mean


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image by (dy, dx) whole pixels; what comes in from outside is 0."""
    n, _, h, w = x.shape
    pad = int(shift.abs().max()) if shift.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, [pad, pad, pad, pad])
    rows = torch.arange(h, device=x.device)[None, :] + pad - shift[:, 0:1]  # (N, H): source row of each row
    cols = torch.arange(w, device=x.device)[None, :] + pad - shift[:, 1:2]
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dimensions first: (N, H, W, C) -> (N, C, H, W).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, centre: torch.Tensor, side: int) -> torch.Tensor:
    """Zero a ``side`` x ``side`` square around each image's centre (clipped at the borders)."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    top, left = centre[:, 0:1] - side // 2, centre[:, 1:2] - side // 2
    inside_y = (ys >= top) & (ys < top + side)  # (N, H)
    inside_x = (xs >= left) & (xs < left + side)  # (N, W)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)
