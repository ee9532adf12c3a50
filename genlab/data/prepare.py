"""Corpus -> tokenizer -> train/validation token files (read back through numpy.memmap).

Prepared data is cached under ``$GENLAB_CACHE`` (default ~/.cache/genlab) by a fingerprint of
the input files' contents and every setting, so a second run on the same corpus starts at once.
A cache entry is written to a temporary folder and renamed into place: never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from genlab.config import DataConfig
from genlab.data import corpus, tokenizer
from genlab.errors import ConfigError, DataError

FORMAT_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab"))


@dataclass
class Prepared:
    root: Path
    meta: dict

    @property
    def dtype(self):
        return np.dtype(self.meta["dtype"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer.json"

    def tokenizer(self) -> Tokenizer:
        return tokenizer.load(self.tokenizer_path)

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.root / f"{split}.bin", dtype=self.dtype, mode="r")

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


def prepare(cfg: DataConfig, tok: Tokenizer | None = None, log=print) -> Prepared:
    """Prepare (or fetch from the cache) the token files for ``cfg``. With ``tok`` the corpus is
    encoded with that tokenizer (fine-tuning an existing run) instead of training a new one."""
    if not 0.0 < cfg.val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5) (got {cfg.val_fraction})")
    sources = corpus.resolve(cfg.corpus)
    corpus_fp = corpus.fingerprint(sources)
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}|{corpus_fp}|{cfg.val_fraction}|".encode())
    if tok is not None:
        h.update(b"given-tokenizer|" + tok.to_str().encode())
    else:
        h.update(f"{cfg.tokenizer}|{cfg.vocab_size if cfg.tokenizer == 'bpe' else 0}".encode())
    fp = h.hexdigest()
    root = cache_root() / "data" / fp[:24]
    if (root / "meta.json").exists():
        return Prepared(root, json.loads((root / "meta.json").read_text()))

    t0 = time.time()
    docs = corpus.documents(sources)
    n_bytes = sum(len(d.encode()) for d in docs)
    log(f"preparing {len(docs):,} documents ({n_bytes / 1e6:.1f} MB) from {len(sources):,} files")
    if tok is None:
        tok = tokenizer.train(cfg.tokenizer, docs, cfg.vocab_size)
    eot = tokenizer.eot_id(tok)
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= 2**16 else np.uint32

    encoded = [np.asarray(e.ids + [eot], dtype=dtype) for e in tok.encode_batch(docs)]
    total = sum(len(e) for e in encoded)
    # The split depends on the corpus alone, not the tokenizer: a run resumed or fine-tuned with a
    # given tokenizer sees the same documents on each side.
    rng = np.random.default_rng(int(corpus_fp[:8], 16))
    if len(encoded) >= 10:
        # Whole documents go to validation until it holds val_fraction of the tokens.
        order = rng.permutation(len(encoded))
        val_ids, val_tokens = [], 0
        for i in order:
            if val_tokens >= cfg.val_fraction * total:
                break
            val_ids.append(i)
            val_tokens += len(encoded[i])
        val_set = set(val_ids)
        train = np.concatenate([e for i, e in enumerate(encoded) if i not in val_set])
        val = np.concatenate([encoded[i] for i in sorted(val_set)])
    else:  # a few large documents: hold out the tail of the token stream
        stream = np.concatenate(encoded)
        cut = int(len(stream) * (1 - cfg.val_fraction))
        train, val = stream[:cut], stream[cut:]
    if len(train) < 2 or len(val) < 2:
        raise DataError(f"the corpus is too small to split ({total} tokens); give more text")

    meta = {
        "fingerprint": fp,
        "format": FORMAT_VERSION,
        "corpus": cfg.corpus,
        "tokenizer": tokenizer.kind_of(tok),
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "documents": len(docs),
        "files": len(sources),
        "bytes": n_bytes,
        "train_tokens": int(len(train)),
        "val_tokens": int(len(val)),
        # bytes per token, for bits-per-byte from a loss measured per token
        "bytes_per_token": n_bytes / max(total, 1),
        "seconds": round(time.time() - t0, 2),
    }
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train.tofile(tmp / "train.bin")
    val.tofile(tmp / "val.bin")
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, root)
    except OSError:  # another process prepared the same data meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"(vocab {vocab:,}) in {meta['seconds']}s -> {root}")
    return Prepared(root, meta)


def sample_batch(tokens: np.ndarray, batch: int, context: int, rng: np.random.Generator):
    """Random windows of ``context + 1`` tokens -> (inputs, targets) as int64 tensors."""
    n = len(tokens) - context - 1
    if n < 1:
        raise DataError(f"only {len(tokens)} tokens for a context of {context}; give more text or a smaller --context")
    starts = rng.integers(0, n, size=batch)
    windows = np.stack([tokens[s : s + context + 1].astype(np.int64) for s in starts])
    t = torch.from_numpy(windows)
    return t[:, :-1], t[:, 1:]


def eval_windows(tokens: np.ndarray, context: int, count: int):
    """``count`` evenly spaced windows (the same every time) for validation loss."""
    context = min(context, len(tokens) - 1)  # a tiny validation split still gets measured
    if context < 1:
        raise DataError(f"only {len(tokens)} validation tokens; give more text")
    n = len(tokens) - context - 1
    starts = np.linspace(0, n, num=min(count, max(n, 0) + 1)).astype(np.int64)
    windows = np.stack([tokens[s : s + context + 1].astype(np.int64) for s in starts])
    t = torch.from_numpy(windows)
    return t[:, :-1], t[:, 1:]
