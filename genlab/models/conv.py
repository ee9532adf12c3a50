"""Resolution and width schedule shared by the convolutional image models (GAN, VAE).

A model that grows an image from a small square doubles its side a few times: 28 px is 7 -> 14 -> 28,
64 px is 4 -> 8 -> 16 -> 32 -> 64. Channels double every time the side halves (capped at 8x the base
width), the usual DCGAN shape: wide and small at the bottom, narrow and large at the top.
"""

from __future__ import annotations

from genlab.errors import ConfigError

MAX_WIDTH_MULT = 8


def size_plan(image_size: int) -> tuple[int, int]:
    """(base, doublings) with ``image_size == base * 2**doublings``, base in 3..7, doublings >= 2."""
    base, doublings = image_size, 0
    while base > 7 and base % 2 == 0:
        base //= 2
        doublings += 1
    if not 3 <= base <= 7 or doublings < 2:
        raise ConfigError(
            f"image size {image_size} is not supported: use a side of 3..7 times a power of two "
            f"(at least 4x), e.g. 16, 28, 32, 48 or 64")
    return base, doublings


def widths(width: int, doublings: int) -> list[int]:
    """Channels at each resolution, from the smallest (index 0) to the full image (index ``doublings``)."""
    return [width * min(2 ** (doublings - i), MAX_WIDTH_MULT) for i in range(doublings + 1)]
