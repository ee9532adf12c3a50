"""A keyed statistical watermark for generated text: the green-list scheme of Kirchenbauer et al.
(2023, "A Watermark for Large Language Models") with the self-hashing context of their follow-up
("On the Reliability of Watermarks for Large Language Models", 2023).

Sampling. At every step each candidate token ``t`` is *green* or not, as a keyed pseudo-random
function of ``t`` and the three tokens before it: the window is (x[-3], x[-2], x[-1], t), its
*anchor* is the smallest keyed hash of a token in the window (min-hash, so editing x[-3] or x[-2]
changes the anchor only when it held the minimum), and ``t`` is green when
``PRF(anchor, x[-1], t) < gamma`` (a fraction ``gamma`` of the vocabulary, in expectation). The
previous token always enters the seed: without it a token that is its own anchor (about one window
in four) would be green or red once and for all, and frequent tokens would shift the z-score of
unmarked text by a key-dependent amount (measured: mean z +1.36 on human text for one key, -0.42
for another; with x[-1] in the seed, within +-0.3, like the paper's LeftHash). The sampler
adds ``delta`` to the logit of every green token, then samples as usual (temperature, top-k/p).
Because the window includes the candidate itself ("self-hash"), the whole vocabulary is scored
at once: no rejection loop over the top candidates is needed.

Detection needs the key and the tokenizer, not the model: re-tokenize the text, count green
tokens ``g`` among the ``T`` scored ones (each distinct window once, so repeated text does not
inflate the count), and ``z = (g - gamma T) / sqrt(T gamma (1 - gamma))``; the one-sided p-value
is ``P(N(0,1) > z)``. Without the watermark (or with another key) each token is green with
probability ``gamma`` whatever the text, so z is about standard normal.

The key is any string; it is stretched with BLAKE2b into the hash keys. The keyed hashes are
SplitMix64 finalizers over those keys: fast enough to score a 49k-token vocabulary per step
(well under a millisecond), not a cryptographic PRF.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from genlab.errors import ConfigError

SCHEME = "kgw-selfhash"
GAMMA = 0.25  # share of green tokens (the paper's default)
DELTA = 2.0  # added to green logits
WINDOW = 4  # tokens in the hashed window, the candidate included (3 tokens of context)
Z_THRESHOLD = 4.0  # detected when z > 4 (one-sided p < 3.2e-5), the paper's threshold

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def check_key(key: str | None) -> str:
    if key is None or not str(key).strip():
        raise ConfigError("the watermark key is empty; pass --watermark KEY (any non-empty string)")
    return str(key)


@dataclass(frozen=True)
class WatermarkParams:
    scheme: str = SCHEME
    gamma: float = GAMMA
    delta: float = DELTA
    window: int = WINDOW

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TextDetection:
    detected: bool
    z: float  # the statistic
    p_value: float  # one-sided normal
    scored: int  # distinct windows scored
    green: int
    tokens: int  # tokens in the text
    threshold: float = Z_THRESHOLD

    def to_dict(self) -> dict:
        return {"kind": "text", "detected": self.detected, "statistic": "z", "z": round(self.z, 4),
                "p_value": self.p_value, "scored_tokens": self.scored, "green_tokens": self.green,
                "tokens": self.tokens, "threshold": self.threshold}


def z_score(green: int, scored: int, gamma: float = GAMMA) -> float:
    if scored <= 0:
        return 0.0
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


def p_value(z: float) -> float:
    """One-sided: P(N(0, 1) > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


class TextWatermark:
    """The watermark for one key. ``apply(logits, context)`` is what ``TokenSampler`` calls
    (genlab.generate.text's ``LogitsWatermark``); ``detect(ids)`` scores token ids."""

    def __init__(self, key: str, params: WatermarkParams = WatermarkParams()) -> None:
        check_key(key)
        if not 0 < params.gamma < 1:
            raise ConfigError(f"the watermark's gamma must be in (0, 1) (got {params.gamma})")
        if params.window < 1:
            raise ConfigError(f"the watermark's window must be at least 1 (got {params.window})")
        self.params = params
        self.context_width = params.window - 1  # TokenSampler keeps this many recent tokens
        d = hashlib.blake2b(key.encode("utf-8"), digest_size=32, person=b"genlab-kgw-v2").digest()
        self._k = [np.uint64(int.from_bytes(d[i:i + 8], "little")) for i in (0, 8, 16, 24)]
        self._threshold = np.uint64(min(int(params.gamma * 2**64), 2**64 - 1))
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def describe(self) -> dict:
        """What a manifest may say about it (never the key)."""
        return self.params.to_dict()

    def _table(self, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per token id: its keyed hash (for anchors), its keyed mix (for the green test) and its
        keyed mix as the previous token."""
        if vocab not in self._tables:
            ids = np.arange(vocab, dtype=np.uint64)
            k1, k2, k3, k4 = self._k
            self._tables[vocab] = (_mix(_mix(ids ^ k1) ^ k2), _mix(ids ^ k3), _mix(_mix(ids ^ k4) ^ k1))
        return self._tables[vocab]

    def green_mask(self, context: Sequence[int], vocab: int) -> np.ndarray:
        """(vocab,) bool: which next tokens are green after ``context`` (its last window-1 tokens)."""
        th, tm, tp = self._table(vocab)
        left = [int(t) for t in list(context)[-self.context_width:]] if self.context_width else []
        left = [t for t in left if 0 <= t < vocab]
        if not left:
            return _mix(th ^ tm) < self._threshold
        anchors = np.minimum(th[left].min(), th)
        return _mix(anchors ^ tp[left[-1]] ^ tm) < self._threshold

    def is_green(self, context: Sequence[int], token: int, vocab: int) -> bool:
        th, tm, tp = self._table(vocab)
        window = [int(t) for t in list(context)[-self.context_width:]] if self.context_width else []
        seed = th[np.array([*window, token], dtype=np.int64)].min()
        if window:
            seed = seed ^ tp[window[-1]]
        return bool(_mix(np.array([seed ^ tm[token]], dtype=np.uint64))[0] < self._threshold)

    def apply(self, logits: torch.Tensor, context: Sequence[int]) -> torch.Tensor:
        mask = torch.from_numpy(self.green_mask(context, logits.shape[-1]))
        return logits + mask.to(logits.dtype) * self.params.delta

    def detect(self, ids: Sequence[int], vocab: int, threshold: float = Z_THRESHOLD,
               ignore_repeated: bool = True) -> TextDetection:
        """Score token ids (the text re-tokenized). The first window-1 tokens are context only (in
        generation their own context was the prompt, which the detector does not see)."""
        ids = [int(t) for t in ids]
        w = self.context_width
        seen: set[tuple[int, ...]] = set()
        scored = green = 0
        for i in range(w, len(ids)):
            window = tuple(ids[i - w:i + 1])
            if ignore_repeated:
                if window in seen:
                    continue
                seen.add(window)
            if not 0 <= ids[i] < vocab or any(not 0 <= t < vocab for t in window):
                continue
            scored += 1
            green += self.is_green(window[:-1], ids[i], vocab)
        z = z_score(green, scored, self.params.gamma)
        return TextDetection(detected=scored > 0 and z > threshold, z=z, p_value=p_value(z), scored=scored,
                             green=green, tokens=len(ids), threshold=threshold)
