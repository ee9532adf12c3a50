"""A small super-resolution network in one file: residual conv blocks and a sub-pixel (PixelShuffle)
output that predicts what bicubic enlargement misses.

    low-res x ──> conv 3x3 ──> [conv 3x3, ReLU, conv 3x3, + skip] x blocks ──> conv 3x3 (+ head skip)
                   │                                                               │
                   │                        conv 3x3 -> channels x scale² ──> PixelShuffle(scale) = residual
                   └──> bicubic(x, scale) ──────────────────────────────────────────────────── + ──> high-res

- ESPCN's idea: compute at the low resolution and rearrange channels into pixels at the end
  (PixelShuffle), so the cost grows with the input's pixels, not the output's.
- EDSR/ESRGAN's body: residual blocks without batch norm (norms hurt pixel-exact regression), a
  long skip from the head to the end of the body, residuals scaled by ``res_scale``.
- The network adds a residual to bicubic enlargement, and its last conv starts at zero: an
  untrained model *is* bicubic, and training only has to learn the missing detail.

Pixels are in [0, 1]; ``forward`` does not clamp (the L1 loss sees the raw output), callers that
make images clamp. Fully convolutional: any input size works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.jsonconfig import JsonConfig

SCALES = (2, 4)


@dataclass
class UpscaleConfig(JsonConfig):
    scale: int = 2  # enlargement factor: 2 or 4
    channels: int = 1  # 1 = grayscale, 3 = RGB
    width: int = 32  # feature channels of the body
    blocks: int = 4  # residual blocks
    res_scale: float = 1.0  # residual branch weight (EDSR uses 0.1 for very wide bodies)

    def validate(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"--scale must be 2 or 4 (got {self.scale}); for 8x, apply a 2x or 4x run "
                              f"repeatedly (genlab upscale --scale 8 with a 2x run)")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        if not 1 <= self.width <= 512:
            raise ConfigError(f"--width must be between 1 and 512 (got {self.width})")
        if not 0 <= self.blocks <= 64:
            raise ConfigError(f"--blocks must be between 0 and 64 (got {self.blocks})")
        if not 0 < self.res_scale <= 1:
            raise ConfigError(f"res-scale must be in (0, 1] (got {self.res_scale})")

    @property
    def receptive_radius(self) -> int:
        """Low-res pixels on each side that one output pixel can depend on: one per 3x3 conv (head, two
        per block, body end, tail; bicubic's two are within that), plus one for the sub-pixel offset."""
        return 4 + 2 * self.blocks


class ResBlock(nn.Module):
    def __init__(self, width: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class Upscaler(nn.Module):
    def __init__(self, cfg: UpscaleConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.head = nn.Conv2d(cfg.channels, cfg.width, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(cfg.width, cfg.res_scale) for _ in range(cfg.blocks)))
        self.body_end = nn.Conv2d(cfg.width, cfg.width, 3, padding=1)
        self.tail = nn.Conv2d(cfg.width, cfg.channels * cfg.scale ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(cfg.scale)
        nn.init.zeros_(self.tail.weight)  # start as bicubic
        nn.init.zeros_(self.tail.bias)

    @property
    def scale(self) -> int:
        return self.cfg.scale

    def bicubic(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) in [0, 1] -> (N, C, h * scale, w * scale), not clamped."""
        h = self.head(x)
        h = h + self.body_end(self.body(h))
        return self.bicubic(x) + self.shuffle(self.tail(h))
