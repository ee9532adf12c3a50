"""Tokenizers, both stored as one Hugging Face ``tokenizers`` file (tokenizer.json):

- ``bpe``: byte-level BPE trained on the corpus (GPT-2 style; never an unknown token).
- ``char``: one token per character seen in the corpus, plus [UNK] for unseen ones.

Both reserve ``<|endoftext|>``, placed between documents.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from genlab.errors import ConfigError, RunError

EOT = "<|endoftext|>"
UNK = "[UNK]"
KINDS = ("bpe", "char")


def train_bpe(docs: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size < 257 + 1:
        raise ConfigError(f"a byte-level BPE vocabulary needs at least 258 entries (got {vocab_size})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def train_char(docs: Iterable[str]) -> Tokenizer:
    chars: set[str] = set()
    for d in docs:
        chars.update(d)
    vocab = {UNK: 0, EOT: 1}
    for c in sorted(chars):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOT])
    return tok


def train(kind: str, docs: list[str], vocab_size: int) -> Tokenizer:
    if kind == "bpe":
        return train_bpe(docs, vocab_size)
    if kind == "char":
        return train_char(docs)
    raise ConfigError(f"unknown tokenizer '{kind}'; choose one of: {', '.join(KINDS)}")


def load(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} is missing; the run has no tokenizer")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise RunError(f"{path} is not a valid tokenizer file ({str(e).splitlines()[0][:80]})") from None


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise RunError(f"the tokenizer has no {EOT} token")
    return i


def kind_of(tok: Tokenizer) -> str:
    return "char" if isinstance(tok.model, models.WordLevel) else "bpe"
