"""What every export of an image model shares: the module that is exported (the GAN's EMA generator
or the VAE's decoder, latent -> image) and its parity check.

The exported graph has one fixed contract for every runtime:

    inputs   z (batch, latent_dim) float32, and for conditional models labels (batch,) int64
    output   images (batch, channels, height, width) float32 in [0, 1]

so an app draws z from a standard normal, picks class indices (the names are in the export's
metadata) and shows the images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genlab.export.common import Parity
from genlab.generate.images import ImageGenerator

# fp32 graphs differ from PyTorch by float rounding only; images are in [0, 1].
PIXEL_TOLERANCE = 1e-3
# Quantized or fp16 graphs: the average pixel barely moves, but a few pixels can move a lot (dynamic
# int8 of the GAN's first linear layer: max 0.19, mean 0.0065 on Fashion-MNIST), so both are checked.
LOW_PRECISION_PIXEL_TOLERANCE = 0.3


class ImageDecoder(nn.Module):
    """latent (+ labels) -> images in [0, 1]: the generator of a GAN or the decoder of a VAE."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.conditional = model.cfg.num_classes > 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.model.class_embedding(labels) if self.conditional else None
        return self.model.generate(z, emb)


def load_image_decoder(run: str | Path) -> tuple[ImageGenerator, ImageDecoder]:
    gen = ImageGenerator.from_run(run, device="cpu")
    return gen, ImageDecoder(gen.model).eval()


def example_inputs(decoder: ImageDecoder, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Fixed latents (and labels cycling through the classes) for tracing and parity checks."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, decoder.model.latent_dim, generator=g)
    if not decoder.conditional:
        return (z,)
    return z, torch.arange(batch, dtype=torch.long) % decoder.model.cfg.num_classes


def image_meta(gen: ImageGenerator) -> dict:
    """What an app needs to feed the exported graph and label its output."""
    cfg = gen.model.cfg
    return {"latent_dim": gen.model.latent_dim, "class_names": gen.class_names if gen.conditional else [],
            "image_shape": [cfg.channels, cfg.image_size, cfg.image_size], "pixel_range": [0.0, 1.0]}


def image_parity(reference: torch.Tensor, got, what: str, tolerance: float = PIXEL_TOLERANCE) -> Parity:
    """Largest and mean absolute pixel difference; the mean must stay within a tenth of ``tolerance``."""
    diff = (reference - torch.as_tensor(got, dtype=torch.float32).reshape(reference.shape)).abs()
    return Parity(what, diff.max().item(), tolerance, unit="pixel", mean_abs_diff=diff.mean().item(),
                  mean_tolerance=tolerance / 10)
