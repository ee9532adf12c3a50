"""Quality scores for generated text and images, and the gate the studio passes each asset through.

Text is scored on four things, each a plain measurement with a threshold:

- ``repetition``: the share of the text's word 3-grams that repeat an earlier 3-gram of the same text
  (0 for text that never repeats itself; degenerate loops approach 1);
- ``perplexity``: exp of the mean negative log-likelihood per token under a reference language model
  (the foundation model when it is imported, else the model that wrote the text), through genlab's
  one scoring function (``train.lm.token_nll``). It catches gibberish; a reference model finds its
  own degenerate loops *easy*, which is why repetition is scored separately;
- ``words``: the length, in whitespace-separated words;
- ``english``: an honest, simple language check, not a language identifier: the share of the words
  that are among ~200 of the most common English words (function words, pronouns, common verbs),
  which is about 0.4-0.6 for English prose and under 0.1 for other languages, code or noise; and
  ``letters``, the share of non-space characters that are letters.

An image is scored by a classifier's confidence that it shows the class it was made for.

The gate (``gate``) makes a candidate, scores it, and while it fails a threshold makes another with a
new seed, up to ``retries`` more times; it ships the first that passes, or else the best of them (the
fewest failed thresholds, then the highest ``quality``), and records every attempt's seed and scores.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

import numpy as np

from genlab.errors import ConfigError

COMMON_ENGLISH = frozenset("""
a about above after again against all also am an and any are around as at back be because been before
being below between both but by came can could day did do does doing down during each even every few
first for from get go going good got great had has have having he her here hers herself him himself his
how i if in into is it its itself just know last like little long made make man many may me more most
much must my myself never new no nor not now of off often old on once one only or other our ours
ourselves out over own people really right said same say see she should since so some still such take
than that the their theirs them themselves then there these they thing think this those though three
through time to too two under until up upon us very was way we well went were what when where which
while who whom why will with without world would year years yes yet you your yours yourself
yourselves life work first part place made back use always something nothing""".split())



def words_of(text: str) -> list[str]:
    """Lower-cased word tokens (letters and apostrophes); punctuation and digits are dropped."""
    return [w.strip("'").lower() for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text)]


def repetition(words: list[str], n: int = 3) -> float:
    """Share of word ``n``-grams that repeat an earlier one (0 when there are none)."""
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def english_share(words: list[str]) -> float:
    return sum(w in COMMON_ENGLISH for w in words) / len(words) if words else 0.0


def letter_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


@dataclass
class Thresholds:
    max_repetition: float = 0.2
    max_perplexity: float = 60.0
    min_words: int = 40
    min_english: float = 0.25
    min_letters: float = 0.7
    min_confidence: float = 0.6  # images: the classifier's probability of the wanted class

    def validate(self) -> None:
        if not 0 <= self.max_repetition <= 1 or not 0 <= self.min_english <= 1 or not 0 <= self.min_letters <= 1:
            raise ConfigError("repetition, English and letter thresholds are shares in [0, 1]")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError(f"the confidence threshold must be in [0, 1] (got {self.min_confidence})")
        if self.max_perplexity <= 1 or self.min_words < 0:
            raise ConfigError("the perplexity threshold must be above 1 and the word minimum not negative")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    kind: str  # text | image
    scores: dict
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def quality(self) -> float:
        """One number to rank candidates that fail alike (higher is better)."""
        s = self.scores
        if self.kind == "image":
            return float(s.get("confidence") or 0.0)
        ppl = s.get("perplexity")
        return (s["english"] - s["repetition"] + min(s["words"], 200) / 400
                - (math.log(ppl) / 10 if ppl else 0.0))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "passed": self.passed, "scores": self.scores, "failures": self.failures}


PerplexityFn = Callable[[str], "float | None"]


def score_text(text: str, perplexity: PerplexityFn | None = None, thresholds: Thresholds | None = None) -> Verdict:
    """The text's scores and the thresholds it fails (perplexity only with a reference model)."""
    th = thresholds or Thresholds()
    words = words_of(text)
    scores = {"words": len(words), "chars": len(text), "repetition": round(repetition(words), 4),
              "english": round(english_share(words), 4), "letters": round(letter_share(text), 4),
              "perplexity": None}
    if perplexity is not None:
        ppl = perplexity(text)
        scores["perplexity"] = None if ppl is None else round(float(ppl), 3)
    fails = []
    if scores["words"] < th.min_words:
        fails.append(f"{scores['words']} words < {th.min_words}")
    if scores["repetition"] > th.max_repetition:
        fails.append(f"repetition {scores['repetition']:.2f} > {th.max_repetition}")
    if scores["english"] < th.min_english:
        fails.append(f"common-English share {scores['english']:.2f} < {th.min_english}")
    if scores["letters"] < th.min_letters:
        fails.append(f"letter share {scores['letters']:.2f} < {th.min_letters}")
    if scores["perplexity"] is not None and scores["perplexity"] > th.max_perplexity:
        fails.append(f"perplexity {scores['perplexity']:.1f} > {th.max_perplexity}")
    return Verdict("text", scores, fails)


def score_confidence(confidence: float, label: str | None, rule: str, thresholds: Thresholds | None = None,
                     **extra) -> Verdict:
    th = thresholds or Thresholds()
    scores = {"confidence": round(float(confidence), 6), "label": label, "classifier": rule, **extra}
    fails = [] if confidence >= th.min_confidence else [f"confidence {confidence:.2f} < {th.min_confidence}"]
    return Verdict("image", scores, fails)


class ReferenceModel:
    """Perplexity under a language model genlab opens (``LanguageModel``), of at most ``max_tokens``
    tokens of the text."""

    def __init__(self, lm, description: dict, max_tokens: int = 512) -> None:
        self.lm, self.description, self.max_tokens = lm, description, max_tokens

    def __call__(self, text: str) -> float | None:
        from genlab.train.lm import token_nll

        ids = self.lm.encode(text)[: self.max_tokens]
        if self.lm.eot is not None:
            ids = [self.lm.eot, *ids]  # the first word is predicted too, from a document start
        if len(ids) < 2:
            return None
        context = min(self.lm.config.context, self.max_tokens + 1)
        nll, count = token_nll(self.lm.model, np.asarray(ids, np.int64), context, device=self.lm.device)
        return math.exp(min(nll / max(count, 1), 50.0))


# ---- the gate -------------------------------------------------------------------------------------

T = TypeVar("T")
SEED_STRIDE = 1000  # attempt k uses seed + k * SEED_STRIDE: far from the seeds of neighbouring requests


@dataclass
class Attempt(Generic[T]):
    seed: int
    candidate: T
    verdict: Verdict


@dataclass
class GateResult(Generic[T]):
    kept: Attempt[T]
    attempts: list[Attempt[T]]

    @property
    def passed(self) -> bool:
        return self.kept.verdict.passed

    def record(self) -> dict:
        """What the manifest says: every attempt's seed and scores, which was kept, and whether it passed."""
        return {"passed": self.passed, "attempts": len(self.attempts),
                "kept": self.attempts.index(self.kept),
                "status": "passed" if self.passed else "shipped-below-threshold",
                "scores": self.kept.verdict.scores, "failures": self.kept.verdict.failures,
                "tries": [{"seed": a.seed, **a.verdict.to_dict()} for a in self.attempts]}


def gate(make: Callable[[int], T], score: Callable[[T], Verdict], seed: int, retries: int = 2,
         on_retry: Callable[[int, Verdict], None] | None = None) -> GateResult[T]:
    """Make and score candidates until one passes or ``retries`` extra attempts are spent (attempt k
    with ``seed + k * SEED_STRIDE``); keep the first that passes, else the best."""
    if retries < 0:
        raise ConfigError(f"quality retries must not be negative (got {retries})")
    attempts: list[Attempt[T]] = []
    for k in range(retries + 1):
        if attempts and on_retry is not None:
            on_retry(k, attempts[-1].verdict)
        s = seed + k * SEED_STRIDE
        c = make(s)
        attempts.append(Attempt(s, c, score(c)))
        if attempts[-1].verdict.passed:
            break
    kept = min(attempts, key=lambda a: (len(a.verdict.failures), -a.verdict.quality))
    return GateResult(kept, attempts)


# ---- the reference model ----------------------------------------------------------------------------

_LOADED: dict[str, object] = {}  # path -> LanguageModel: the foundation model is loaded once per process


def reference_model(own_lm=None, device: str = "auto") -> ReferenceModel | None:
    """The model text is scored under: the foundation model when it is imported (``runs/smollm2``),
    else ``own_lm`` (the model that wrote it; a ``LanguageModel``), else None (no perplexity)."""
    from pathlib import Path

    from genlab.foundation import DEFAULT_RUN

    if (DEFAULT_RUN / "config.json").is_file():
        key = str(DEFAULT_RUN.resolve())
        if own_lm is not None and own_lm.run is not None and str(Path(own_lm.run).resolve()) == key:
            lm = own_lm
        else:
            if key not in _LOADED:
                from genlab.generate.text import load_lm

                _LOADED[key] = load_lm(DEFAULT_RUN, device=device)
            lm = _LOADED[key]
        return ReferenceModel(lm, {"kind": "foundation", "run": str(DEFAULT_RUN)})
    if own_lm is not None:
        return ReferenceModel(own_lm, {"kind": "own-model", "run": str(own_lm.run) if own_lm.run else None})
    return None


def bundle_quality(text: dict, image: dict | None) -> dict:
    """The manifest's ``quality`` section: each asset's gate record and one status for the bundle
    (``shipped-below-threshold`` when any asset shipped without passing: the bundle is marked)."""
    passed = text["passed"] and (image is None or image["passed"])
    return {"status": "passed" if passed else "shipped-below-threshold", "text": text, "illustration": image}


# ---- files (`genlab check`) -----------------------------------------------------------------------------

def read_text_file(path) -> str:
    """A UTF-8 text file, or a one-line error for a missing, empty, binary or non-UTF-8 one."""
    from pathlib import Path

    from genlab.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' is not a file")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DataError(f"{path} looks binary (it contains NUL bytes); give a text file or an image")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it with iconv") from None
    if not text.strip():
        raise DataError(f"{path} is empty; there is nothing to score")
    return text


def read_image_file(path, size: int, channels: int) -> np.ndarray:
    """An image file as uint8 (C, size, size): converted to the channels and reduced (box filter, which
    undoes the studio's whole-pixel enlargement exactly) or enlarged to the side the classifier reads."""
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    from genlab.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable image ({e.__class__.__name__}); give a PNG or JPEG") from None
    if im.size != (size, size):
        im = im.resize((size, size), Image.BOX if min(im.size) >= size else Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
