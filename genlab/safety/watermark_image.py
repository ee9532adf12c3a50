"""An invisible, keyed watermark on generated pictures, through the ``invisible-watermark`` package
(its DWT-DCT-SVD embedding: Haar wavelet, 4x4 DCT blocks, the largest singular value of each block
quantized to carry one bit; the payload repeats over every block).

The payload is ``bits`` (48) bits derived from the key with BLAKE2b, so a picture says "made with
this key" without carrying the key. It goes into the luma (Y) channel: genlab's pictures are often
grayscale (Fashion-MNIST), where the chroma channels the package uses by default are flat and JPEG
subsamples them away. The package works on the array's own dtype, so the picture is handed over as
float32 and rounded and clipped here (in uint8 its arithmetic wraps, which speckles dark pixels).

Detection decodes the payload and counts the bits that agree with the key's payload: under the null
(an unmarked picture, or another key) each bit agrees with probability 1/2, so the p-value is the
binomial tail P(Bin(bits, 1/2) >= matches). Detected when p < 1e-4 (at least 39 of 48 bits).

Size: the package refuses pictures under 256x256 pixels (``MIN_PIXELS``). genlab's 28-pixel
Fashion-MNIST samples are enlarged before they are marked (the studio picks a scale of at least 10,
i.e. 280 pixels); the mark is applied to the delivered, enlarged picture.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from genlab.errors import ConfigError
from genlab.safety.watermark_text import check_key

METHOD = "dwtDctSvd"
BITS = 48
STRENGTH = 48  # on the luma channel: survives JPEG 50 at 280 px (36, the package default, does not)
MIN_PIXELS = 256 * 256  # the package's own limit (width x height)
MIN_SIDE = 256
P_THRESHOLD = 1e-4


def binomial_tail(matches: int, n: int) -> float:
    """P(Bin(n, 1/2) >= matches)."""
    if n <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(max(matches, 0), n + 1)) / 2**n


def min_scale(side: int) -> int:
    """The smallest integer enlargement that makes a ``side``-pixel square picture markable."""
    return max(1, math.ceil(MIN_SIDE / max(side, 1)))


@dataclass
class ImageDetection:
    detected: bool
    bit_accuracy: float
    matches: int
    bits: int
    p_value: float

    def to_dict(self) -> dict:
        return {"kind": "image", "detected": self.detected, "statistic": "bit_accuracy",
                "bit_accuracy": round(self.bit_accuracy, 4), "matches": self.matches, "bits": self.bits,
                "p_value": self.p_value, "threshold": P_THRESHOLD}


def _encoder_classes():
    try:
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("image watermarks need the 'invisible-watermark' package: "
                          "pip install --no-deps invisible-watermark opencv-python-headless PyWavelets") from e
    return WatermarkEncoder, WatermarkDecoder


def _as_bgr_float(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 RGB(A) -> float32 BGR, and whether it was gray."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ConfigError(f"expected an (H, W[, C]) picture with 1, 3 or 4 channels (got shape {image.shape})")
    gray = img.shape[2] == 1
    rgb = np.repeat(img, 3, axis=2) if gray else img[:, :, :3]
    return np.ascontiguousarray(rgb[:, :, ::-1]).astype(np.float32), gray


class ImageWatermark:
    def __init__(self, key: str, bits: int = BITS, strength: int = STRENGTH, method: str = METHOD) -> None:
        check_key(key)
        if method not in ("dwtDct", "dwtDctSvd"):
            raise ConfigError(f"unknown image watermark method '{method}' (dwtDct or dwtDctSvd)")
        self.method, self.bits, self.strength = method, bits, strength
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=32, person=b"genlab-img-v1").digest()
        self.payload = np.unpackbits(np.frombuffer(digest, np.uint8))[:bits].astype(bool)

    def describe(self) -> dict:
        return {"scheme": f"invisible-watermark:{self.method}", "channel": "Y", "bits": self.bits,
                "strength": self.strength, "payload": "key-derived (blake2b)"}

    @property
    def _scales(self) -> list[int]:
        return [self.strength, 0, 0]

    @staticmethod
    def check_size(image: np.ndarray) -> None:
        h, w = np.asarray(image).shape[:2]
        if h * w < MIN_PIXELS:
            raise ConfigError(f"the picture is {w}x{h} pixels; the image watermark needs at least "
                              f"{MIN_SIDE}x{MIN_SIDE} (enlarge it, e.g. --scale {min_scale(min(h, w))})")

    def embed(self, image: np.ndarray) -> np.ndarray:
        """The marked picture, uint8, the same shape as ``image`` (gray stays gray: only luma changes)."""
        self.check_size(image)
        encoder_cls, _ = _encoder_classes()
        bgr, gray = _as_bgr_float(image)
        enc = encoder_cls()
        enc.set_watermark("bits", [int(b) for b in self.payload])
        out = enc.encode(bgr, self.method, scales=self._scales)
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)[:, :, ::-1]  # back to RGB
        img = np.asarray(image)
        if gray:
            # Only Y moved and U = V = 128, so R = G = B = Y: the picture is still gray.
            out = out[:, :, :1]
            return out[:, :, 0] if img.ndim == 2 else out
        if img.shape[2] == 4:
            out = np.concatenate([out, img[:, :, 3:]], axis=2)
        return np.ascontiguousarray(out)

    def decode(self, image: np.ndarray) -> np.ndarray:
        self.check_size(image)
        _, decoder_cls = _encoder_classes()
        bgr, _ = _as_bgr_float(image)
        return np.asarray(decoder_cls("bits", self.bits).decode(bgr, self.method, scales=self._scales), dtype=bool)

    def detect(self, image: np.ndarray) -> ImageDetection:
        got = self.decode(image)
        matches = int((got == self.payload).sum())
        p = binomial_tail(matches, self.bits)
        return ImageDetection(detected=p < P_THRESHOLD, bit_accuracy=matches / self.bits, matches=matches,
                              bits=self.bits, p_value=p)
