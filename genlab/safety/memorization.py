"""Memorization audits (`genlab audit memorization RUN`): does a model repeat its training data?

Language models. The training text (a run's own training split, decoded from its token files, or a
corpus the user names for an imported model) is indexed by a suffix array over its characters
(``suffix_array``: prefix doubling in numpy, O(n log n) per round and log2 of the longest repeat
rounds; seconds for megabytes). The longest verbatim overlap of a query with the corpus is found by
binary search over the suffix array: a pattern occurs iff the first suffix not below it starts with
it, and the longest match of every start position is found in one left-to-right pass that only
tries to beat the best so far (O((|q| + best) log n) string comparisons). The audit samples N texts
from nothing, and greedily continues prefixes of training documents (Carlini et al.'s extraction
test: a model that memorized a document writes its true continuation), and reports per group the
longest overlap, its median, the share of texts with an overlap of ``min_chars`` (50) characters or
more, and, for the continuations, how many characters of the true continuation came out verbatim.
Held-out text of the same length (the run's validation split) gives the baseline that ordinary
phrases reach by chance.

Image models. Each sample's nearest training image, in pixels (Euclidean on [0, 1]) and in the
features of genlab's own classifier (genlab.evaluate.classifier), compared with the same distance
for real held-out test images: the share of samples closer to the training set than 95% (and than
half) of the test images are. A model that copies its training images puts far more than 5% of its
samples below that line; one that generalizes puts about as many as the test images do, or fewer.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from genlab import runs
from genlab.errors import ConfigError, DataError

MIN_CHARS = 50  # an overlap this long (characters) counts as verbatim repetition
SEPARATOR = "\x00"  # between documents: never in a query, so no match spans two documents

Log = Callable[[str], None]


# ---- the index -------------------------------------------------------------------------------------

def suffix_array(codes: np.ndarray) -> np.ndarray:
    """Start offsets of the suffixes of ``codes`` (any integer sequence) in lexicographic order, a
    suffix that is a prefix of another first (Python's string order). Prefix doubling: round k sorts
    by the ranks of the first 2^k symbols, as (rank of the first half, rank of the second half)."""
    codes = np.asarray(codes)
    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64)
    _, rank = np.unique(codes, return_inverse=True)
    rank = rank.astype(np.int64).reshape(-1)
    sa = np.argsort(rank, kind="stable")
    k = 1
    while int(rank[sa[-1]]) < n - 1:  # ranks not all distinct yet
        second = np.zeros(n, np.int64)
        second[: n - k] = rank[k:] + 1  # 0: past the end (shorter suffixes first)
        key = rank * (n + 1) + second
        sa = np.argsort(key, kind="stable")
        ordered = key[sa]
        rank = np.empty(n, np.int64)
        rank[sa] = np.concatenate(([0], np.cumsum(ordered[1:] != ordered[:-1])))
        k *= 2
    return sa


@dataclass
class Match:
    length: int  # characters
    query_start: int = 0
    corpus_start: int = -1

    def text(self, query: str) -> str:
        return query[self.query_start: self.query_start + self.length]


class TextIndex:
    """A suffix array over documents joined by NUL: ``find`` and ``longest_match`` by binary search."""

    def __init__(self, text: str, sa: np.ndarray, doc_starts: np.ndarray) -> None:
        self.text = text
        self.sa = np.ascontiguousarray(sa, dtype=np.int64)
        self._sa = memoryview(self.sa)  # indexing gives Python ints: fast in bisect
        self.doc_starts = doc_starts

    @classmethod
    def from_documents(cls, docs: list[str], cache: Path | None = None) -> TextIndex:
        docs = [d.replace(SEPARATOR, " ") for d in docs if d]
        if not docs:
            raise DataError("the corpus to audit against is empty")
        text = SEPARATOR.join(docs)
        starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]]).astype(np.int64)
        sa = None
        path = None
        if cache is not None:
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]
            path = Path(cache) / f"{digest}.npy"
            if path.is_file():
                try:
                    sa = np.load(path, allow_pickle=False)
                    if len(sa) != len(text):
                        sa = None
                except (OSError, ValueError):
                    sa = None
        if sa is None:
            sa = suffix_array(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4"))
            if path is not None:
                buf = _npy_bytes(sa.astype(np.int32 if len(sa) < 2**31 else np.int64))
                runs.atomic_write_bytes(path, buf)
        return cls(text, sa, starts)

    def __len__(self) -> int:
        return len(self.text)

    @property
    def documents(self) -> int:
        return len(self.doc_starts)

    def find(self, pattern: str) -> int:
        """An offset where ``pattern`` occurs in the corpus, or -1."""
        m, text = len(pattern), self.text
        j = bisect.bisect_left(self._sa, pattern, key=lambda p: text[p: p + m])
        if j < len(self._sa) and text[self._sa[j]: self._sa[j] + m] == pattern:
            return self._sa[j]
        return -1

    def longest_match(self, query: str) -> Match:
        """The longest substring of ``query`` that occurs verbatim in the corpus (the first such, by
        position in the query)."""
        query = query.replace(SEPARATOR, " ")
        best = Match(0)
        n = len(query)
        for i in range(n):
            if n - i <= best.length:
                break
            while i + best.length < n:
                pos = self.find(query[i: i + best.length + 1])
                if pos < 0:
                    break
                best = Match(best.length + 1, i, pos)
        return best

    def document_of(self, offset: int) -> int:
        return int(np.searchsorted(self.doc_starts, offset, side="right") - 1)


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def index_cache() -> Path:
    from genlab.data.prepare import cache_root

    return cache_root() / "memorization"


# ---- the training text of a run, or a named corpus ---------------------------------------------------

def corpus_documents(specs: list[str]) -> tuple[list[str], str]:
    from genlab.data import corpus

    return corpus.documents(corpus.resolve(specs)), ", ".join(specs)


def run_training_split(run: str | Path) -> tuple[list[str], list[str], str]:
    """(training documents, held-out documents, description) of an LM run, decoded from the token
    files its data preparation makes (the documents the model was trained on, whole)."""
    from genlab.config import DataConfig
    from genlab.data import conversations as conv
    from genlab.data import prepare as prep
    from genlab.data import tokenizer as tokmod

    run = Path(run)
    cfg = runs.read_config(run)
    section = cfg.get("data")
    if not isinstance(section, dict) or "config" not in section:
        raise DataError(f"'{run}' records no training data (an imported model?); name the corpus to audit "
                        "against with --corpus FILE|FOLDER|fortunes")
    specs = section["config"]["corpus"]
    if conv.is_chat(specs):
        raise DataError(f"'{run}' was trained on chat conversations ({specs[0]}); audit against a text corpus "
                        "with --corpus")
    tok_path = run / "tokenizer.json"
    if not tok_path.is_file():
        raise DataError(f"'{run}' has no tokenizer.json; name the corpus to audit against with --corpus")
    tok = tokmod.load(tok_path)
    prepared = prep.prepare(DataConfig(**section["config"]), tok=tok, log=lambda m: None)
    eot = tokmod.eot_id(tok)

    def docs(split: str) -> list[str]:
        ids = np.asarray(prepared.tokens(split), dtype=np.int64)
        cuts = np.flatnonzero(ids == eot)
        pieces = np.split(ids, cuts + 1)
        texts = tok.decode_batch([p[p != eot].tolist() for p in pieces if len(p[p != eot])],
                                 skip_special_tokens=True)
        return [t for t in texts if t.strip()]

    return docs("train"), docs("val"), "training split of " + ", ".join(specs)


# ---- language-model audit --------------------------------------------------------------------------

@dataclass
class TextFinding:
    kind: str  # sample | continuation | held-out
    overlap: int  # longest verbatim overlap with the corpus, characters
    chars: int  # characters of generated text
    excerpt: str  # the overlapping text (at most 200 characters)
    prompt: str = ""  # continuations: the training prefix
    exact: int | None = None  # continuations: characters of the true continuation reproduced verbatim


@dataclass
class GroupSummary:
    kind: str
    count: int
    longest: int
    median: float
    share_over: float  # share with an overlap of at least min_chars
    mean_chars: float
    share_extracted: float | None = None  # continuations: share reproducing >= min_chars of the truth

    @classmethod
    def of(cls, kind: str, items: list[TextFinding], min_chars: int) -> GroupSummary:
        ov = np.array([f.overlap for f in items]) if items else np.zeros(0)
        ex = [f.exact for f in items if f.exact is not None]
        return cls(kind, len(items), int(ov.max()) if len(ov) else 0, float(np.median(ov)) if len(ov) else 0.0,
                   float((ov >= min_chars).mean()) if len(ov) else 0.0,
                   float(np.mean([f.chars for f in items])) if items else 0.0,
                   float(np.mean([e >= min_chars for e in ex])) if ex else None)


@dataclass
class TextAuditReport:
    run: str
    corpus: str
    corpus_chars: int
    corpus_documents: int
    min_chars: int
    sampling: dict
    groups: list[GroupSummary]
    findings: list[TextFinding] = field(default_factory=list)

    def group(self, kind: str) -> GroupSummary | None:
        return next((g for g in self.groups if g.kind == kind), None)

    def to_dict(self) -> dict:
        return {"family": "lm", **asdict(self)}


@dataclass
class TextAuditConfig:
    n: int = 50  # unconditional samples
    prefixes: int = 20  # training-document prefixes to continue
    prefix_chars: int = 64  # characters of each prefix (cut back to a word boundary)
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float | None = None
    seed: int = 0
    min_chars: int = MIN_CHARS

    def validate(self) -> None:
        if self.n < 0 or self.prefixes < 0 or self.n + self.prefixes == 0:
            raise ConfigError("give --n samples and/or --prefixes continuations (both must be >= 0, one > 0)")
        if self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be positive (got {self.max_tokens})")
        if self.min_chars < 1:
            raise ConfigError(f"--min-chars must be positive (got {self.min_chars})")
        if self.prefix_chars < 1:
            raise ConfigError(f"--prefix-chars must be positive (got {self.prefix_chars})")


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _prefix_of(doc: str, chars: int) -> str:
    cut = doc[:chars]
    space = cut.rfind(" ")
    return cut[:space + 1] if space > chars // 2 else cut


def audit_generator(generate: Callable[[str, int], str], index: TextIndex, cfg: TextAuditConfig,
                    train_docs: list[str], heldout_docs: list[str] | None = None, log: Log | None = None
                    ) -> tuple[list[GroupSummary], list[TextFinding]]:
    """The audit over any ``generate(prompt, seed) -> text``: ``cfg.n`` samples from an empty prompt,
    greedy continuations of ``cfg.prefixes`` training-document prefixes (when ``train_docs``), and
    the held-out baseline (``heldout_docs`` cut to the samples' mean length)."""
    cfg.validate()
    log = log or (lambda m: None)
    findings: list[TextFinding] = []

    def finding(kind: str, text: str, **extra) -> TextFinding:
        m = index.longest_match(text)
        return TextFinding(kind, m.length, len(text), m.text(text)[:200], **extra)

    for i in range(cfg.n):
        findings.append(finding("sample", generate("", cfg.seed + i)))
        log(f"sample {i + 1}/{cfg.n}")
    rng = random.Random(cfg.seed)
    long_docs = [d for d in train_docs if len(d) >= cfg.prefix_chars + cfg.min_chars]
    for i, doc in enumerate(rng.sample(long_docs, min(cfg.prefixes, len(long_docs)))):
        prompt = _prefix_of(doc, cfg.prefix_chars)
        text = generate(prompt, -1)
        findings.append(finding("continuation", text, prompt=prompt, exact=_common_prefix(text, doc[len(prompt):])))
        log(f"continuation {i + 1}/{min(cfg.prefixes, len(long_docs))}")
    generated = [f.chars for f in findings]
    if heldout_docs and generated:
        length = max(1, int(np.mean(generated)))
        pieces = [d[:length] for d in heldout_docs if len(d.strip()) >= min(length, cfg.min_chars)]
        for text in random.Random(cfg.seed + 1).sample(pieces, min(max(cfg.n, cfg.prefixes), len(pieces))):
            findings.append(finding("held-out", text))
    kinds = [k for k in ("sample", "continuation", "held-out") if any(f.kind == k for f in findings)]
    return [GroupSummary.of(k, [f for f in findings if f.kind == k], cfg.min_chars) for k in kinds], findings


def audit_lm(run: str | Path, corpus: list[str] | None = None, cfg: TextAuditConfig | None = None,
             device: str = "auto", log: Log | None = None) -> TextAuditReport:
    """Memorization audit of a language model (any artifact genlab opens) against its own training
    split, or against ``corpus`` (corpus specs; for imported models)."""
    from genlab.generate.text import load_lm

    cfg = cfg or TextAuditConfig()
    cfg.validate()
    log = log or (lambda m: None)
    if corpus:
        train_docs, source = corpus_documents(corpus)
        heldout: list[str] | None = None
    else:
        train_docs, heldout, source = run_training_split(run)
    log(f"indexing {source}: {sum(len(d) for d in train_docs):,} characters in {len(train_docs):,} documents")
    index = TextIndex.from_documents(train_docs, cache=index_cache())
    lm = load_lm(run, device=device)

    def generate(prompt: str, seed: int) -> str:
        if seed < 0:  # continuations: greedy, the model's most likely text
            return lm.generate(prompt, max_tokens=cfg.max_tokens, temperature=0.0)
        return lm.generate(prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=seed)

    groups, findings = audit_generator(generate, index, cfg, train_docs, heldout, log)
    sampling = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
                "continuations": "greedy", "prefix_chars": cfg.prefix_chars}
    return TextAuditReport(str(run), source, len(index), index.documents, cfg.min_chars, sampling, groups, findings)


def format_text_audit(report: TextAuditReport) -> tuple[list[str], list[list[str]]]:
    # overlap: longest verbatim overlap with the corpus (characters); extracted: the share of continuations
    # that reproduce at least min_chars characters of the true continuation
    headers = ["texts", "n", "mean chars", "longest overlap", "median", f"share >= {report.min_chars}",
               f"extracted >= {report.min_chars}"]
    rows = []
    for g in report.groups:
        rows.append([g.kind, str(g.count), f"{g.mean_chars:.0f}", str(g.longest), f"{g.median:.0f}",
                     f"{g.share_over:.1%}", "" if g.share_extracted is None else f"{g.share_extracted:.1%}"])
    return headers, rows


# ---- image audit ----------------------------------------------------------------------------------

def nearest_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``queries`` to its nearest row of ``reference``, and its index."""
    import torch

    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float32))
    ref_sq = (ref * ref).sum(1)
    dists, idx = [], []
    for i in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[i: i + chunk], np.float32))
        d2 = (q * q).sum(1, keepdim=True) - 2 * q @ ref.T + ref_sq[None]
        best = d2.min(1).indices
        # the distance to the chosen neighbour again, directly: the expansion above rounds, and an exact
        # copy must come out at exactly 0
        dists.append((q - ref[best]).norm(dim=1).numpy())
        idx.append(best.numpy())
    if not dists:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(dists), np.concatenate(idx)


@dataclass
class SpaceSummary:
    space: str  # pixels | features
    sample_median: float  # median nearest-training distance of the samples
    test_median: float  # ... and of real held-out test images
    share_below_test_p5: float  # share of samples closer than 95% of test images are
    share_below_test_median: float
    exact_copies: int  # samples at distance 0 (pixels only meaningful)


@dataclass
class ImageAuditReport:
    run: str
    family: str
    n_samples: int
    n_train: int
    n_test: int
    classifier_test_accuracy: float
    spaces: list[SpaceSummary]
    nearest_train: dict[str, list[int]]  # per space: the index of each sample's nearest training image

    def to_dict(self) -> dict:
        return {"family": self.family, **asdict(self)}


def compare_to_test(space: str, sample_d: np.ndarray, test_d: np.ndarray) -> SpaceSummary:
    p5, med = float(np.quantile(test_d, 0.05)), float(np.median(test_d))
    return SpaceSummary(space, float(np.median(sample_d)), med, float((sample_d < p5).mean()),
                        float((sample_d < med).mean()), int((sample_d == 0).sum()))


def audit_images(run: str | Path, n: int = 1000, seed: int = 0, reference: int = 2000, device: str = "auto",
                 classifier_config=None, quiet: bool = False) -> ImageAuditReport:
    """Nearest training image of ``n`` samples (conditional models: cycling through the classes) and of
    up to ``reference`` real test images, in pixels and in the classifier's features."""
    from genlab.evaluate.classifier import load_or_train
    from genlab.evaluate.image_metrics import run_data
    from genlab.generate.images import ImageGenerator

    if n < 1 or reference < 1:
        raise ConfigError(f"--n and --reference must be positive (got {n}, {reference})")
    _, data = run_data(run)
    if len(data.test) == 0:
        raise DataError(f"'{data.name}' has no test images to compare with")
    gen = ImageGenerator.from_run(run, device=device)
    samples = gen.sample(n, seed=seed)
    test = data.test.images[np.random.default_rng(seed).permutation(len(data.test))[:reference]]
    clf = load_or_train(data, classifier_config, device=device, quiet=quiet)
    spaces, nearest = image_memorization(samples, data.train.images, test, lambda x: clf.run(x)[0])
    return ImageAuditReport(str(run), gen.family, n, len(data.train), len(test), clf.test_accuracy, spaces, nearest)


def image_memorization(samples: np.ndarray, train: np.ndarray, test: np.ndarray,
                       features: Callable[[np.ndarray], np.ndarray]) -> tuple[list[SpaceSummary], dict]:
    """The comparison itself, for uint8 (N, C, H, W) samples, training and test images, in pixels and in
    ``features(images)``."""
    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    train_px = flat(train)
    s_px, s_px_idx = nearest_distances(flat(samples), train_px)
    t_px, _ = nearest_distances(flat(test), train_px)
    train_f = features(train)
    s_f, s_f_idx = nearest_distances(features(samples), train_f)
    t_f, _ = nearest_distances(features(test), train_f)
    return ([compare_to_test("pixels", s_px, t_px), compare_to_test("features", s_f, t_f)],
            {"pixels": s_px_idx.tolist(), "features": s_f_idx.tolist()})


def format_image_audit(report: ImageAuditReport) -> tuple[list[str], list[list[str]]]:
    headers = ["space", "median NN distance: samples", "test images", "samples closer than 95% of test",
               "closer than the test median", "exact copies"]
    rows = [[s.space, f"{s.sample_median:.3f}", f"{s.test_median:.3f}", f"{s.share_below_test_p5:.1%}",
             f"{s.share_below_test_median:.1%}", str(s.exact_copies)] for s in report.spaces]
    return headers, rows
